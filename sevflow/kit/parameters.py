"""The parameters every procedure takes, defined once.

Prefect builds each procedure's Run form and validates its parameters from the flow
function's own signature, so each flow still lists them; `procedure_parameters` checks that
it lists them exactly (names and defaults) and adds their descriptions to the form, from here.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from sevflow.models import Severity

F = TypeVar("F", bound=Callable[..., Any])

SHARED_PARAMETERS: dict[str, tuple[Any, str]] = {
    "severity": (Severity.SEV2, "SEV-1 critical (production down, data loss, security breach: immediate) · "
                 "SEV-2 major (within 1 hour) · SEV-3 minor (within 24 hours) · SEV-4 low (normal queue)."),
    "incident_id": (None, "The incident this run works on; empty to open a new one."),
    "reason": ("", "Why, in a sentence: recorded on the timeline."),
    "policy": ("default", "The `sevflow Approval Policy` block that decides who may approve."),
    "dry_run": (False, "Show the plan the first gate would ask about, and change nothing."),
}


def procedure_parameters(fn: F) -> F:
    """Check `fn` takes every shared parameter with its shared default, and document them in
    its docstring's `Args:` section (put it under `@flow`, so the Run form shows them)."""
    signature = inspect.signature(fn)
    for name, (default, _) in SHARED_PARAMETERS.items():
        found = signature.parameters.get(name)
        if found is None or found.default != default:
            raise TypeError(f"procedure {fn.__name__} must take `{name}` with default {default!r} "
                            "(sevflow.kit.SHARED_PARAMETERS)")
    doc = inspect.cleandoc(fn.__doc__ or fn.__name__)
    if "\nArgs:" not in doc:
        doc += "\n\nArgs:"
    fn.__doc__ = doc + "".join(f"\n    {name}: {text}" for name, (_, text) in SHARED_PARAMETERS.items())
    return fn
