"""`sevflow serve`: a worker process that serves every procedure (Prefect's Runner).

Runs are started in child processes. Prefect's Runner spawns each child from a fresh
interpreter, which costs this machine ~2.5 s of imports per start, and every approval
restarts its run (a suspended run is rescheduled). So children are forked from a forkserver
that has Prefect and the flows imported already. Measured by bench/approval_latency.py on
this 2-core machine (medians, poll 0.2 s): approval → change starts 4.9 s with plain spawn,
2.0 s for a bare suspend/resume flow with this fast start, 2.4 s for sevflow's
application-rollback. If Prefect's internals differ from what this expects, the worker
falls back to plain spawn and says so.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
from typing import Any

from prefect.logging import get_logger

from sevflow import setup
from sevflow.deployments import deployment_kwargs, flow_modules

log = get_logger("sevflow.worker")


class _ForkserverShim:
    """Stands in for the `multiprocessing` module inside prefect.flow_engine."""

    def __init__(self, preload: list[str]) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(preload)
        # Start it now, not at the first run: the first approval after a worker restart
        # should not pay for the imports.
        from multiprocessing import forkserver

        forkserver.ensure_running()

    def get_context(self, method: str | None = None) -> Any:
        return self._ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def install_fast_start() -> bool:
    import prefect.flow_engine as engine

    if not hasattr(engine, "run_flow_in_subprocess") or getattr(engine, "multiprocessing", None) is not multiprocessing:
        log.warning("Prefect's flow engine is not as expected: flow runs start by plain spawn (slower).")
        return False
    engine.multiprocessing = _ForkserverShim(["prefect", "prefect.flow_engine", *flow_modules()])  # type: ignore[attr-defined]
    return True


async def _serve(limit: int | None, query_seconds: float, escalation_interval: float | None) -> None:
    from prefect.runner import Runner

    runner = Runner(name=f"sevflow-{socket.gethostname()}", query_seconds=query_seconds, limit=limit)
    kept = await _kept_schedules()
    for flow, kwargs in deployment_kwargs(escalation_interval):
        await runner.add_flow(flow, **kwargs)
    await _restore_schedules(kept)
    await runner.start()


KEPT_SCHEDULE_PREFIX = "sevflow-cleanup-"
"""Schedules a procedure added to a served deployment (Memory/Disk Full's approved cleanup
check). Registering a deployment again replaces all its schedules (Prefect's upsert), so
the worker reads these before it registers and puts them back after."""


async def _kept_schedules() -> dict[str, list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from sevflow.deployments import DEPLOYMENT_NAME, procedures

    kept: dict[str, list[Any]] = {}
    async with get_client() as client:
        for name in procedures():
            try:
                dep = await client.read_deployment_by_name(f"{name}/{DEPLOYMENT_NAME}")
            except ObjectNotFound:
                continue
            schedules = [s for s in await client.read_deployment_schedules(dep.id)
                         if (s.slug or "").startswith(KEPT_SCHEDULE_PREFIX)]
            if schedules:
                kept[f"{name}/{DEPLOYMENT_NAME}"] = schedules
    return kept


async def _restore_schedules(kept: dict[str, list[Any]]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    async with get_client() as client:
        for name, schedules in kept.items():
            dep = await client.read_deployment_by_name(name)
            present = {s.slug for s in await client.read_deployment_schedules(dep.id)}
            missing = [DeploymentScheduleCreate(schedule=s.schedule, active=s.active, parameters=s.parameters,
                                                slug=s.slug) for s in schedules if s.slug not in present]
            if missing:
                await client.create_deployment_schedules(dep.id, missing)
                log.info("Kept %d approved schedule(s) of %s: %s", len(missing), name,
                         ", ".join(str(s.slug) for s in missing))


def serve(limit: int | None = 20, query_seconds: float = 0.2, escalation_interval: float | None = 30.0) -> None:
    """Register sevflow's blocks and defaults, then serve every procedure until stopped."""
    setup.ensure_defaults()
    install_fast_start()
    asyncio.run(_serve(limit, query_seconds, escalation_interval))
