"""Memory/Disk Full (EMERGENCY-PROCEDURES.md, "Memory/Disk Full"), on the affected host.

    1. IDENTIFY the cause      what's using resources? is it a leak or legitimate?
    2. FREE immediate space    clear caches, delete temp files, kill memory hogs
    3. PREVENT recurrence      add monitoring, set up alerts, add cleanup cron jobs
    4. ROOT CAUSE              why did this happen?

It reads the local filesystems and /proc and deletes local files, so it must run on the
host itself: start a worker there (`sevflow serve` on that machine) and name the host's
`sevflow Host Target` block in `host`. Run anywhere else, it stops before any change.

Each change of steps 2 and 3 is its own gate (clear caches, delete temp files, kill a
process, prevention), so the policy can treat them apart and an approver can refuse one and
allow another; a refused change is recorded and the run goes on to the next.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

import socket

from prefect import flow
from prefect.states import Cancelled, Completed, State
from pydantic import BaseModel, Field

from sevflow import plans
from sevflow.errors import ConfigurationError
from sevflow.kit import NOTHING_TO_DO, REJECTED, Plan, Procedure, ProcedureEnd, Severity, begin, procedure_parameters, publish_records, run
from sevflow.models import HostFacts, HostSpec, human_bytes
from sevflow.tasks.filesystem import delete_files, find_cache_files, find_largest, find_temp_files, measure_filesystems, run_cache_command
from sevflow.tasks.monitoring import (
    PRESSURE_EVENT, create_automation, deployment_id, existing_prevention, host_resource, report_usage,
    schedule_cleanup, write_alert_rules,
)
from sevflow.tasks.processes import find_memory_hogs, kill_process
from sevflow.tasks.targets import read_host_target

PROCEDURE = "memory-disk-full"


class FreedReport(BaseModel):
    incident_id: str
    host: str
    freed_bytes: int = Field(default=0, description="bytes the deleted files and cleared caches held")
    deleted_files: list[str] = Field(default_factory=list)
    left_alone: list[str] = Field(default_factory=list)
    killed: list[int] = Field(default_factory=list)
    prevention: list[str] = Field(default_factory=list)
    declined: list[str] = Field(default_factory=list)
    available_before: dict[str, int] = Field(default_factory=dict)
    available_after: dict[str, int] = Field(default_factory=dict)
    findings: list[str] = Field(default_factory=list)


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
@procedure_parameters
def memory_disk_full(
    host: str,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
    dry_run: bool = False,
) -> FreedReport | State:
    """Find what fills the host's disk or memory and, after approval, free it and stop it recurring.

    Reports usage per filesystem, the largest directories and files, recent growth and the
    processes using the most memory (sampled: leak or legitimate); then asks, one gate each,
    to clear the configured caches, delete old temp files in the allow-listed folders (the
    exact files, with the bytes they free), kill the leaking process (checked to be the same
    process), and add monitoring, alert rules and a scheduled cleanup check. Runs on the host.

    Args:
        host: Name of the `sevflow Host Target` block of the affected host (run by a worker on that host).
    """
    read_host_target(host)  # an unknown host stops here, before anything
    ctx = begin(PROCEDURE, host, severity, incident_id, reason, policy, dry_run)
    return run(ctx, free_memory_and_disk, host)


def free_memory_and_disk(ctx: Procedure, host: str) -> FreedReport:
    """The runbook's Memory/Disk Full, in the caller's run."""
    # 1. IDENTIFY the cause: usage, largest directories and files, growth, memory hogs (leak?).
    spec = read_host_target(host, "identify")
    _require_this_host(spec)
    facts = identify_cause(spec)
    report_usage(spec, facts, plans.pressure(spec, facts))
    findings = plans.findings(spec, facts)
    cause = plans.root_cause(spec, facts)

    # 2. FREE immediate space, one gate per kind of change; each acts as soon as it is approved.
    report = FreedReport(incident_id=ctx.incident.incident_id, host=spec.host, findings=findings,
                         available_before={f.mount: f.available_bytes for f in facts.filesystems})
    caches = ctx.offer(lambda reading: plan_caches(host, reading), gate="caches")
    if caches:
        for op in caches.operations:
            if op.op == "delete-files":
                _record(report, delete_files(op))
            else:
                run_cache_command(op)
                report.freed_bytes += op.measured_bytes
    temp = ctx.offer(lambda reading: plan_temp_files(host, reading), gate="temp-files")
    for op in temp.operations if temp else []:
        _record(report, delete_files(op))
    hog = ctx.offer(lambda reading: plan_kill(host, reading, spec, facts), gate="kill")
    if hog:
        report.killed.append(kill_process(hog.operation("kill-process")).pid)

    # 3. PREVENT recurrence: monitoring (automation), alerts (Prometheus), cleanup schedule.
    prevent = ctx.offer(lambda reading: plan_prevention(host, reading), gate="prevent")
    if prevent:
        report.prevention = [_prevent(op) for op in prevent.operations]
    if ctx.dry_run:
        raise ctx.dry_run_end()

    # 4. ROOT CAUSE, and what was freed.
    after = measure_filesystems(spec, "after")
    report.available_after = {f.mount: f.available_bytes for f in after}
    report.declined = list(ctx.declined)
    return _finish(ctx, report, [p for p in (caches, temp, hog, prevent) if p], cause)


def identify_cause(spec: HostSpec) -> HostFacts:
    """Runbook step 1: every fact comes from a read-only step."""
    memory = find_memory_hogs(spec)
    return HostFacts(host=spec.host, filesystems=measure_filesystems(spec, "before"), scans=find_largest(spec),
                     memory=memory.memory, top_processes=memory.top_processes, trends=memory.trends,
                     killable=memory.killable)


def plan_caches(host: str, reading: str) -> Plan | None:
    spec = read_host_target(host, reading)
    folders, measured = find_cache_files(spec)
    return plans.clear_caches_plan(spec, [(f.root, f.files) for f in folders], measured)


def plan_temp_files(host: str, reading: str) -> Plan | None:
    spec = read_host_target(host, reading)
    return plans.temp_files_plan(spec, [(f.root, f.files) for f in find_temp_files(spec)])


def plan_kill(host: str, reading: str, first: HostSpec, facts: HostFacts) -> Plan | None:
    """The first plan uses the IDENTIFY step's sample; one made again (the process moved)
    samples afresh."""
    if reading != "kill":
        first = read_host_target(host, reading)
        memory = find_memory_hogs(first)
        facts = facts.model_copy(update={"memory": memory.memory, "trends": memory.trends,
                                         "killable": memory.killable})
    chosen = plans.choose_memory_hog(first, facts)
    return plans.kill_process_plan(first, chosen) if chosen else None


def plan_prevention(host: str, reading: str) -> Plan | None:
    spec = read_host_target(host, reading)
    served = deployment_id(plans.MONITORING_DEPLOYMENT)  # not served: stops with what to do
    path = plans.rules_path(spec)
    content = plans.alert_rules(spec) if path else None
    state = existing_prevention(plans.automation_name(spec), path, content, plans.MONITORING_DEPLOYMENT,
                                plans.cleanup_slug(spec))
    return plans.prevention_plan(spec, served, state.automation,
                                 state.alert_rules, state.schedule, host_resource(spec.block), PRESSURE_EVENT)


def _require_this_host(spec: HostSpec) -> None:
    here = socket.gethostname()
    if spec.host != here:
        raise ConfigurationError(
            f"This run is on {here!r}, but the host target {spec.block!r} is {spec.host!r}: nothing was read or "
            f"changed. Start a worker on {spec.host} (`sevflow serve` there) and run the procedure on it."
        )


def _record(report: FreedReport, deletion) -> None:  # noqa: ANN001 - a DeletionReport
    report.freed_bytes += deletion.freed_bytes
    report.deleted_files += [f"{deletion.root}/{p}" for p in deletion.deleted]
    report.left_alone += [f"{deletion.root}/{p}" for p in deletion.left_alone]


def _prevent(op) -> str:  # noqa: ANN001 - one of the prevention operations
    if op.op == "create-automation":
        return f"automation {op.name!r} ({create_automation(op)})"
    if op.op == "write-alert-rules":
        return f"alert rules {write_alert_rules(op)}"
    return f"schedule {op.slug!r} on {op.deployment} ({schedule_cleanup(op)})"


def _finish(ctx: Procedure, report: FreedReport, approved: list[Plan], cause: str) -> FreedReport:
    freed = (f"Freed {human_bytes(report.freed_bytes)} ({report.freed_bytes} bytes): {len(report.deleted_files)} "
             f"file(s) deleted" + (f", {len(report.left_alone)} left alone as they changed" if report.left_alone else "")
             + (f"; killed pid {', '.join(map(str, report.killed))}" if report.killed else "") + ".")
    lines = [*report.findings, *(f"Plan {p.digest[:12]} approved: {p.title}" for p in approved)]
    if approved:
        lines += [freed, *(f"Prevention: {p}" for p in report.prevention)]
    lines += [*(f"Declined: {d}" for d in report.declined),
              *(f"Available on {m}: {human_bytes(report.available_before.get(m, 0))} → {human_bytes(b)}"
                for m, b in report.available_after.items())]
    if not approved and report.declined:
        raise ProcedureEnd("rejected", f"Every proposed change was rejected; nothing was changed on {report.host}.",
                           [f"Root cause (as found): {cause}", *lines], Cancelled, REJECTED)
    if not approved:
        raise ProcedureEnd("nothing to do", f"Nothing to free or prevent on {report.host}: no old temp files, no "
                           "cache, no killable leak, monitoring in place.", [f"Root cause (as found): {cause}", *lines], Completed,
                           NOTHING_TO_DO)
    proven = ["Immediate fix applied", "Root cause identified"] + (["Monitoring updated", "Prevention measures planned"] if report.prevention else [])
    publish_records(ctx.incident, "resolved", lines, proven, root_cause=cause)
    return report
