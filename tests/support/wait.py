"""Waiting on a condition in the world (through an API, a file, a process), never on the clock."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "the condition") -> T:
    """Call `check` until it returns something truthy, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
