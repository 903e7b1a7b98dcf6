"""Prevention on the orchestrator and on Prometheus: an automation that starts Memory/Disk
Full when a host reports pressure, a Prometheus alert-rule file, and a scheduled cleanup
check. Each is idempotent: what is already there as planned is left alone and reported.

The host's pressure event (`sevflow.host.pressure` on `sevflow.host.<name>`) is emitted by
the procedure's IDENTIFY step, which the scheduled cleanup check runs: so the schedule is
the monitor, and the automation turns pressure into a gated SEV-2 run.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect.client.orchestration import get_client
from prefect.events import emit_event
from pydantic import BaseModel

from sevflow.errors import ConfigurationError, DriftError
from sevflow.models import CreateAutomation, HostFacts, HostSpec, ScheduleCleanup, WriteAlertRules
from sevflow.tasks.common import step

PRESSURE_EVENT = "sevflow.host.pressure"
USAGE_EVENT = "sevflow.host.usage"


def host_resource(block: str) -> str:
    """The event resource of a host target (by block name: one machine may have several)."""
    return f"sevflow.host.{block}"


def deployment_id(name: str) -> str:
    """The id of deployment `flow/deployment`, or a sentence saying it is not served."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return str(client.read_deployment_by_name(name).id)
        except ObjectNotFound as exc:
            raise ConfigurationError(f"Deployment {name!r} is not registered: start `sevflow serve` on the host "
                                     "first, then run the procedure again.") from exc


class PreventionState(BaseModel):
    """What of the prevention is already in place."""

    automation: bool
    alert_rules: bool
    schedule: bool


@step("check what monitoring exists", timeline=False)
def existing_prevention(automation: str, rules_path: str | None, rules_content: str | None,
                        deployment: str, slug: str) -> PreventionState:
    """Read-only: is the automation there (by name), the rule file (same content), the schedule (by slug)?"""
    with get_client(sync_client=True) as client:
        has_automation = bool(client.read_automations_by_name(automation))
        dep = client.read_deployment_by_name(deployment)
        schedules = client.read_deployment_schedules(dep.id)
    has_rules = True
    if rules_path is not None:
        try:
            with open(rules_path) as f:
                has_rules = f.read() == rules_content
        except FileNotFoundError:
            has_rules = False
    return PreventionState(automation=has_automation, alert_rules=has_rules,
                           schedule=any(getattr(s, "slug", None) == slug for s in schedules))


@step("report host usage", timeline=False)
def report_usage(spec: HostSpec, facts: HostFacts, pressure: list[str]) -> None:
    """Emit the host's usage as an event (and a pressure event when over a threshold)."""
    payload: dict[str, Any] = {
        "filesystems": {f.mount: f.used_percent for f in facts.filesystems},
        "memory_used_percent": facts.memory.used_percent,
    }
    resource = {"prefect.resource.id": host_resource(spec.block), "prefect.resource.name": spec.host}
    emit_event(event=USAGE_EVENT, resource=resource, payload=payload)
    if pressure:
        emit_event(event=PRESSURE_EVENT, resource=resource, payload=payload | {"pressure": pressure})


@step("add monitoring: automation", mutating=True)
def create_automation(op: CreateAutomation) -> str:
    """Create the approved automation unless one of that name exists. Returns its id."""
    from prefect.automations import Automation, EventTrigger, Posture, RunDeployment

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(op.name)
    if existing:
        return str(existing[0].id)
    automation = Automation(
        name=op.name,
        description=f"sevflow: when {op.resource_id} reports {op.event}, run {op.deployment}.",
        trigger=EventTrigger(expect={op.event}, match={"prefect.resource.id": op.resource_id},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[RunDeployment(source="selected", deployment_id=op.deployment_id, parameters=op.parameters)],
    ).create()
    return str(automation.id)


@step("set up alerts: Prometheus rule file", mutating=True)
def write_alert_rules(op: WriteAlertRules) -> str:
    """Write the approved rule file; leave an identical one; refuse to overwrite another."""
    try:
        with open(op.path) as f:
            if f.read() == op.content:
                return op.path
        raise DriftError(f"{op.path} exists with other content: it was left as it is. Move it away or merge "
                         "the rules shown in the plan by hand.")
    except FileNotFoundError:
        pass
    tmp = f"{op.path}.sevflow-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, op.content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, op.path)  # fails if someone created it meanwhile: nothing is overwritten
    os.unlink(tmp)
    return op.path


@step("add cleanup cron job: schedule", mutating=True)
def schedule_cleanup(op: ScheduleCleanup) -> str:
    """Add the approved schedule (by slug) to the deployment unless it has one with that slug."""
    from prefect.client.schemas.schedules import IntervalSchedule

    with get_client(sync_client=True) as client:
        for s in client.read_deployment_schedules(op.deployment_id):  # type: ignore[arg-type]
            if getattr(s, "slug", None) == op.slug:
                return str(s.id)
        created = client.create_deployment_schedules(
            op.deployment_id,  # type: ignore[arg-type]
            # Anchored one interval from now: the first check runs then, not at once.
            [(IntervalSchedule(interval=timedelta(seconds=op.interval_seconds),
                               anchor_date=datetime.now(timezone.utc) + timedelta(seconds=op.interval_seconds)), True)],
            parameters=op.parameters, slug=op.slug,
        )
    return str(created[0].id)
