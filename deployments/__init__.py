"""How each procedure is deployed: one deployment named `sevflow` per flow, served by
`sevflow serve` (and `sevflow up`), plus the scheduled escalation watcher."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import Flow

DEPLOYMENT_NAME = "sevflow"


def procedures() -> dict[str, Flow[Any, Any]]:
    """Every procedure a person or an alert can start, by flow name."""
    from sevflow.flows.application_rollback import application_rollback
    from sevflow.flows.configuration_rollback import configuration_rollback
    from sevflow.flows.data_corruption import data_corruption
    from sevflow.flows.database_rollback import database_rollback

    return {f.name: f for f in (application_rollback, configuration_rollback, data_corruption, database_rollback)}


def watcher() -> Flow[Any, Any]:
    from sevflow.flows.approval_escalation import approval_escalation

    return approval_escalation


def flow_modules() -> list[str]:
    """Modules a worker process needs imported before it runs any flow."""
    return [f.fn.__module__ for f in (*procedures().values(), watcher())]


def deployment_kwargs(escalation_interval: float | None) -> list[tuple[Flow[Any, Any], dict[str, Any]]]:
    """(flow, arguments for Runner.add_flow) for everything sevflow serves."""
    out: list[tuple[Flow[Any, Any], dict[str, Any]]] = [
        (f, dict(name=DEPLOYMENT_NAME, tags=["sevflow"], description=(f.description or "").strip().split("\n")[0]))
        for f in procedures().values()
    ]
    schedule: dict[str, Any] = {}
    if escalation_interval:
        schedule = dict(interval=timedelta(seconds=escalation_interval))
    out.append((watcher(), dict(name=DEPLOYMENT_NAME, tags=["sevflow-watcher"], **schedule)))
    return out
