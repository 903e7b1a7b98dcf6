"""Checking an approved plan still holds, just before it is carried out; showing a plan."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from sevflow.models import IncidentContext, Plan, TimelineEntry, utcnow
from sevflow.tasks.aws import aws_drift, aws_target_changes
from sevflow.tasks.common import step
from sevflow.tasks.git import head_drift
from sevflow.tasks.orchestrator import emit_incident_event, record_timeline
from sevflow.tasks.postgres import databases_missing
from sevflow.tasks.processes import read_process
from sevflow.tasks.targets import database_target_changes, host_target_changes, profile_changes, target_changes


@step("check the approved plan still holds", timeline=False)
def check_preconditions(incident: IncidentContext, gate: str, plan: Plan) -> list[str]:
    """Every precondition of the approved plan, checked against the world now. Returns what
    moved (empty when all hold) and, if anything did, says so on the timeline. Changes nothing.

    Persisted per run, gate and plan: a replay takes the same path as the first pass."""
    moved: list[str] = []
    for pre in plan.preconditions:
        if pre.check == "git-head":
            drift = head_drift(pre)
            if drift:
                moved.append(drift)
        elif pre.check == "target-unchanged" and pre.target is not None:
            changes = target_changes(pre.target)
            if changes:
                moved.append(f"service target {pre.target.block!r} edited: {', '.join(changes)}")
        elif pre.check == "profile-unchanged" and pre.profile is not None:
            changes = profile_changes(pre.profile)
            if changes:
                moved.append(f"outage profile {pre.profile.block!r} edited: {', '.join(changes)}")
        elif pre.check == "host-target-unchanged" and pre.host_target is not None:
            changes = host_target_changes(pre.host_target)
            if changes:
                moved.append(f"host target {pre.host_target.block!r} edited: {', '.join(changes)}")
        elif pre.check == "process-unchanged" and pre.pid is not None:
            now = read_process(pre.pid)
            if now is None:
                moved.append(f"pid {pre.pid} has exited")
            elif (now.start_time, now.boot_id) != (pre.start_time, pre.boot_id):
                moved.append(f"pid {pre.pid} is another process now (started at tick {now.start_time}, "
                             f"not {pre.start_time}): the PID was reused")
        elif pre.check == "aws-target-unchanged" and pre.account is not None:
            changes = aws_target_changes(pre.account)
            if changes:
                moved.append(f"AWS account target {pre.account.block!r} edited: {', '.join(changes)}")
        elif pre.check == "aws-state" and pre.aws is not None and pre.probe is not None:
            drift = aws_drift(pre.aws, pre.probe)
            if drift:
                moved.append(drift)
        elif pre.check == "database-target-unchanged" and pre.database is not None:
            changes = database_target_changes(pre.database)
            if changes:
                moved.append(f"database target {pre.database.block!r} edited: {', '.join(changes)}")
        elif pre.check == "databases-present" and pre.database is not None:
            missing = databases_missing(pre)
            if missing:
                moved.append(f"database(s) {', '.join(missing)} no longer exist")
    if moved:
        record_timeline(incident, f"{gate}-90-drift", TimelineEntry(
            at=utcnow(), source="sevflow", kind="drift",
            description=f"Approved plan {plan.digest[:12]} no longer holds, nothing was changed: " + "; ".join(moved),
            details={"gate": gate, "plan_digest": plan.digest, "moved": moved},
        ))
        emit_incident_event(incident, "sevflow.plan.drifted", {"gate": gate, "plan_digest": plan.digest, "moved": moved})
    return moved


@step("show the plan (dry run)", timeline=False)
def show_plan(incident: IncidentContext, gate: str, plan: Plan) -> str:
    """Publish the plan a gate would ask about as an artifact on the run. Changes nothing."""
    create_markdown_artifact(
        key=f"plan-{gate}", markdown=f"**Dry run: gate `{gate}` would ask for this plan.**\n\n{plan.describe()}",
        description=f"Dry run of {incident.procedure} for {incident.service}: plan {plan.digest[:12]}",
    )
    return plan.digest
