"""Production System Down (EMERGENCY-PROCEDURES.md, "Production System Down").

    1. VERIFY the outage        check from multiple sources; confirm not a local issue
    2. ASSESS the scope         what's affected? how many users? when did it start?
    3. COMMUNICATE              alert stakeholders; post status update
    4. DIAGNOSE                 check logs, recent deployments, external dependencies
    5. REMEDIATE                recent deploy: rollback · external: wait/failover · code bug: hotfix
    6. VERIFY fix               confirm system operational; monitor closely
    7. POST-MORTEM              what happened, the resolution, prevention

Every change is behind an approval gate with its exact plan. The rollback is the Application
Rollback's own body, called inside this run (Prefect cannot suspend a subflow). Before any
approval the only outputs are the stakeholder messages and status posts that say a human
decision is awaited.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import BaseModel

from sevflow import plans
from sevflow.errors import ConfigurationError
from sevflow.flows.application_rollback import roll_back_application
from sevflow.gate import ask_for_ref
from sevflow.kit import (
    DRY_RUN,
    GateClosed,
    Plan,
    Procedure,
    ProcedureEnd,
    Severity,
    begin,
    procedure_parameters,
    publish_records,
    read_service_target,
    run,
)
from sevflow.models import OutageSpec, ServiceSpec, TimelineEntry, utcnow
from sevflow.outage import (
    Diagnosis,
    Remedy,
    StatusUpdate,
    all_healthy,
    choose_remedy,
    deploys_in_window,
    investigating_update,
)
from sevflow.tasks.git import deployed_history, hotfix_preview, inspect_repository, resolve_version, restore_version
from sevflow.tasks.host import build, deploy, fail_over
from sevflow.tasks.logs import check_logs
from sevflow.tasks.orchestrator import record_timeline
from sevflow.tasks.probes import (
    assess_the_scope,
    check_dependencies,
    confirm_operational,
    monitor_closely,
    verify_outage,
    wait_for_dependency,
)
from sevflow.tasks.statuspage import communicate
from sevflow.tasks.targets import read_outage_profile

PROCEDURE = "production-system-down"
NOT_AN_OUTAGE = "NotAnOutage"
STILL_DOWN = "StillDown"
DEPENDENCY_DOWN = "WaitingOnDependency"
MAX_CYCLES = 3
"""How often a fix that did not hold sends the run back to diagnosis before it gives up."""


class OutageReport(BaseModel):
    incident_id: str
    service: str
    remedies: list[str]
    plan_digests: list[str]
    cycles: int
    healthy: bool


class DryRunWithoutPlan(ProcedureEnd):
    """A dry run reached a step whose plan depends on a person's answer (the hotfix ref) or
    on waiting: it says what would be asked, and changes nothing."""

    publish = False

    def __init__(self, gate: str, text: str) -> None:
        message = f"Dry run: {text} Nothing was asked for and nothing was changed."
        super().__init__("dry run", message, [message], Completed, DRY_RUN,
                         data={"gate": gate, "digest": "", "plan": None, "text": message})


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
@procedure_parameters
def production_system_down(
    service: str,
    profile: str | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
    dry_run: bool = False,
) -> OutageReport | State:
    """Production is down: verify it from several places, assess, tell people, diagnose, then
    fix it behind an approval (roll back a recent deploy, fail over from a dead dependency or
    deploy a hotfix), verify and watch the fix, and write the post-mortem.

    Args:
        service: Name of the `sevflow Service Target` block of the service that is down.
        profile: Name of its `sevflow Outage Profile` block; empty for the one named like the service.
    """
    read_service_target(service)  # an unknown service stops here, before anything
    read_outage_profile(profile or service)  # so does a missing outage profile
    ctx = begin(PROCEDURE, service, severity, incident_id, reason, policy, dry_run)
    return run(ctx, handle_outage, service, profile or service)


def handle_outage(ctx: Procedure, service: str, profile_name: str) -> OutageReport:
    """The runbook's Production System Down, in the caller's run."""
    spec = read_service_target(service, "outage")
    profile = read_outage_profile(profile_name, "outage")
    if not spec.health_check_urls:
        raise ConfigurationError(f"Service target {spec.block!r} has no health_check_urls: set them, "
                                 "so the outage can be verified.")
    token = spec.block if spec.health_check_token else None

    # 1. VERIFY the outage: several sources and the control URL.
    _, verdict = verify_outage(spec.health_check_urls, profile, token, "outage")
    if not verdict.confirmed:
        raise ProcedureEnd("not an outage", verdict.summary, [verdict.summary], Completed, NOT_AN_OUTAGE)

    # 2. ASSESS the scope; 3. COMMUNICATE (saying a human decision is awaited).
    scope = assess_the_scope(profile, verdict, ctx.incident.flow_run_id)
    tell(ctx, profile, investigating_update(ctx.incident.incident_id, service, ctx.incident.severity.value,
                                            verdict, scope))

    remedies: list[str] = []
    digests: list[str] = []
    for cycle in range(1, MAX_CYCLES + 1):
        # 4. DIAGNOSE.
        diagnosis = diagnose(spec, profile, scope.since, cycle)
        remedy = choose_remedy(diagnosis, bool(profile.failover_command))
        note(ctx, f"remedy-{cycle}", f"Diagnosis (round {cycle}): {remedy.why} → {remedy.kind}",
             {"milestone": "Root cause identified"} if cycle == 1 else {})

        # 5. REMEDIATE, behind approval.
        done, digest = remediate(ctx, service, spec, profile, remedy, cycle)
        remedies.append(done)
        digests += [digest] if digest else []
        tell(ctx, profile, update(ctx, service, "monitoring", f"{done} Verifying and monitoring."), cycle)

        # 6. VERIFY fix: all sources, then watch.
        probes = confirm_operational(spec.health_check_urls, profile, token, cycle)
        if not all_healthy(probes):
            failing = sorted({f"{r.checks} from {r.vantage}" for r in probes.results if not r.ok})
            note(ctx, f"unfixed-{cycle}", f"After the fix {service} is still failing ({', '.join(failing)}): "
                 "back to diagnosis.")
            continue
        watch = monitor_closely(spec.health_check_urls, profile, token, cycle)
        if watch.held:
            break
        note(ctx, f"broke-again-{cycle}", f"{service} broke again while watched ({', '.join(watch.failing)}): "
             "back to diagnosis.")
        tell(ctx, profile, update(ctx, service, "broke-again", f"{service} broke again after: {done}"), cycle)
    else:
        message = (f"{service} is still down after {MAX_CYCLES} rounds of diagnosis and remediation "
                   f"({'; '.join(remedies)}). A person must take over.")
        raise ProcedureEnd("still down", message, remedies, Failed, STILL_DOWN, proven=["Immediate fix applied"])

    # 7. POST-MORTEM, after telling everyone it is resolved.
    tell(ctx, profile, update(ctx, service, "resolved", f"{service} is operational again: {remedies[-1]}"))
    publish_records(ctx.incident, "resolved", [*remedies, f"Verified from every source and watched for "
                                               f"{profile.watch_seconds:g} s: {service} stayed healthy."],
                    ["Root cause identified", "Immediate fix applied", "System verified working", "Team notified"],
                    impact=scope.sentence(), first_alert_at=scope.since if scope.since_source == "alert" else None,
                    health_before=verdict.summary,
                    health_after=f"healthy from every source that answered "
                    f"({', '.join(sorted({r.vantage for r in probes.results if r.answered}))}), and still healthy "
                    f"after {watch.rounds} round(s) of watching ({watch.watched_seconds:g} s)")
    return OutageReport(incident_id=ctx.incident.incident_id, service=service, remedies=remedies,
                        plan_digests=digests, cycles=len(remedies), healthy=True)


def diagnose(spec: ServiceSpec, profile: OutageSpec, since: datetime, cycle: int) -> Diagnosis:
    """Check logs, recent deployments and external dependencies (read-only steps)."""
    logs = check_logs(profile, cycle)
    history = deployed_history(spec, cycle)
    dependencies = check_dependencies(profile, cycle)
    return Diagnosis(logs=logs, recent_deploys=deploys_in_window(history, since, profile.deploy_window_seconds),
                     running=history[0].sha if history else "", dependencies=dependencies)


def remediate(ctx: Procedure, service: str, spec: ServiceSpec, profile: OutageSpec, remedy: Remedy,
              cycle: int) -> tuple[str, str]:
    """Carry out the chosen remedy behind its gate; returns (what was done, plan digest)."""
    if remedy.kind == "rollback":
        report = roll_back_application(ctx, service)
        return (f"Rolled {service} back to {report.rolled_back_to[:12]} (new commit {report.new_head[:12]}): "
                f"{remedy.why}.", report.plan_digest)
    if remedy.kind == "failover":
        assert remedy.dependency is not None
        plan = ctx.approve(lambda reading: plan_failover(service, profile.block, remedy, reading), gate="failover")
        fail_over(plan.operation("failover"), phase=plan.digest)
        return f"Failed {service} over from {remedy.dependency} ({remedy.why}).", plan.digest
    if remedy.kind == "wait":
        assert remedy.dependency is not None
        if ctx.dry_run:
            raise DryRunWithoutPlan("wait", f"{remedy.why}; the run would wait up to "
                                    f"{profile.dependency_wait_seconds:g} s for {remedy.dependency}.")
        if not wait_for_dependency(profile, remedy.dependency, cycle):
            message = (f"{remedy.dependency} is still down after {profile.dependency_wait_seconds:g} s and no failover "
                       "is configured: nothing was changed. Waiting on the external dependency; configure "
                       "failover_command in the outage profile to offer a failover.")
            raise ProcedureEnd("waiting on an external dependency", message, [message], Failed, DEPENDENCY_DOWN)
        return f"Waited for {remedy.dependency}: it answers again.", ""
    return deploy_hotfix(ctx, service, remedy, cycle)


def deploy_hotfix(ctx: Procedure, service: str, remedy: Remedy, cycle: int) -> tuple[str, str]:
    """A code bug with no recent deploy: ask which ref holds the fix, then deploy exactly that."""
    gate = ctx.gate_name("hotfix-ref")
    question = (f"**{service} is down with no recent deploy** ({remedy.why}). Name the commit, tag or branch "
                "holding the fix: a plan to deploy it (the diff, the commands) is made from that ref and "
                "asked about at the next gate. Reject to leave production as it is.")
    if ctx.dry_run:
        raise DryRunWithoutPlan(gate, f"{remedy.why}; gate {gate!r} would ask which ref to deploy as a hotfix.")
    answered, ref = ask_for_ref(ctx.incident, gate=gate, policy=ctx.policy, kind="hotfix-deploy", question=question)
    if not answered.approved:
        raise GateClosed(answered, f"Hotfix for {service}")
    asked_by = answered.approvers[0]
    plan = ctx.approve(lambda reading: plan_hotfix(ctx, service, ref, asked_by, reading), gate="hotfix")
    restored = restore_version(plan.operation("git-restore"))
    build(plan.operation("build"), phase=plan.digest, at=restored.new_head)
    deploy(plan.operation("deploy"), phase=plan.digest, at=restored.new_head)
    return (f"Deployed hotfix {ref} ({plan.operation('git-restore').source_sha[:12]}) to {service} as commit "  # type: ignore[union-attr]
            f"{restored.new_head[:12]}, named by {asked_by}.", plan.digest)


def plan_failover(service: str, profile_name: str, remedy: Remedy, reading: str) -> Plan:
    spec = read_service_target(service, reading)
    profile = read_outage_profile(profile_name, reading)
    assert remedy.dependency is not None
    return plans.failover_plan(profile, spec, remedy.dependency, profile.dependencies.get(remedy.dependency, ""),
                               remedy.why)


def plan_hotfix(ctx: Procedure, service: str, ref: str, asked_by: str, reading: str) -> Plan:
    spec = read_service_target(service, reading)
    running = inspect_repository(spec)
    fix = resolve_version(spec, ref)
    preview = hotfix_preview(spec, fix.sha)
    if preview.from_sha != running.head_sha:
        raise ConfigurationError(f"{spec.branch} moved while the hotfix was being planned; run again.")
    return plans.hotfix_plan(spec, fix, preview, f"{ctx.run_key}-hotfix", asked_by)


def update(ctx: Procedure, service: str, state: str, message: str) -> StatusUpdate:
    return StatusUpdate(incident_id=ctx.incident.incident_id, service=service, severity=ctx.incident.severity.value,
                        state=state, awaiting_human_decision=False, message=message)  # type: ignore[arg-type]


def tell(ctx: Procedure, profile: OutageSpec, status: StatusUpdate, cycle: int = 0) -> None:
    """COMMUNICATE, and put its outcome on the timeline. A dry run tells nobody."""
    if ctx.dry_run:
        return
    done = communicate(profile, status, f"{ctx.run_key}-{cycle}")
    if done.failed:
        get_run_logger().error("Could not tell: %s", "; ".join(done.failed))
    note(ctx, f"told-{status.state}-{cycle}", f"Told {', '.join(done.told) or 'nobody (no channel configured)'}: "
         f"{status.state}" + (f"; FAILED: {'; '.join(done.failed)}" if done.failed else ""),
         )


def note(ctx: Procedure, key: str, text: str, details: dict | None = None) -> None:
    """A line on the timeline, written once (a replay finds it written)."""
    record_timeline(ctx.incident, f"outage-{key}", TimelineEntry(at=utcnow(), source="sevflow", kind="note",
                                                                  description=text, details=details or {}))
