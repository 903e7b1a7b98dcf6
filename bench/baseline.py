"""The baseline of bench/approval_latency.py: the least an approval-gated Prefect flow does.

`suspend_then_change` suspends with typed input, as sevflow's gate does (the worker is freed;
the answer reschedules the run and its body runs again from the top), and after the resume
runs one task that writes the time it started to a file: the "change".

`serve` is the process that serves it: a plain `prefect.runner.Runner` with sevflow's poll
interval, started by plain spawn unless `fast_start` installs sevflow's forkserver start.

Imports only Prefect: with plain spawn every run imports this module afresh, and anything
more would be counted against the baseline.
"""

# No `from __future__ import annotations`: Prefect builds the parameter schema from the
# flow's annotations, which must be real types.

import asyncio
import time
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput

FLOW_NAME = "bench-suspend-then-change"
QUERY_SECONDS = 0.2  # as `sevflow serve` (its --poll default, and what tests.support.stack.Worker passes)
LIMIT = 20  # as `sevflow serve`


class Approval(RunInput):
    """The same shape of answer as sevflow's gate asks for."""

    decision: Literal["approve", "reject"]
    approver: str
    reason: str


@task(name="make the change", persist_result=True)
def make_the_change(stamp_path: str) -> float:
    """Write the time this task started to `stamp_path`: the moment the change starts."""
    started = time.time()
    Path(stamp_path).write_text(repr(started))
    return started


@flow(name=FLOW_NAME, persist_result=True, log_prints=False)
def suspend_then_change(stamp_path: str) -> float:
    """Suspend until answered; if approved, make the change."""
    answer = suspend_flow_run(wait_for_input=Approval, key="approval")
    if answer.decision != "approve":
        return 0.0
    return make_the_change(stamp_path)


async def _serve(deployment: str) -> None:
    from prefect.runner import Runner

    runner = Runner(name=f"bench-{deployment}", query_seconds=QUERY_SECONDS, limit=LIMIT)
    await runner.add_flow(suspend_then_change, name=deployment)
    await runner.start()


def serve(deployment: str, fast_start: bool) -> None:
    """Serve the baseline flow as deployment `<FLOW_NAME>/<deployment>` until stopped."""
    if fast_start:
        # sevflow's own switch, exactly as `sevflow serve` calls it (its preload list names
        # sevflow's flow modules, not this one; this module imports nothing Prefect has not).
        from sevflow.worker import install_fast_start

        if not install_fast_start():
            raise SystemExit("sevflow.worker.install_fast_start() declined: cannot measure the fast start")
    asyncio.run(_serve(deployment))
