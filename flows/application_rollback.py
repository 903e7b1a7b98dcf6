"""Rollback: Application (EMERGENCY-PROCEDURES.md, "Application Rollback").

    git log --oneline -10                         identify last good version
    git checkout <commit-hash>                    (as a new commit: history is kept)
    npm run build && npm start                    build, deploy
    curl http://localhost:3000/api/health         verify

`roll_back_application` is the procedure's body: other procedures (Production System Down)
call it inside their own run with their `Procedure`.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import BaseModel

from sevflow import plans
from sevflow.errors import ConfigurationError, PreflightError
from sevflow.kit import NothingToDo, preflight, procedure_parameters, Plan, Procedure, ProcedureEnd, Severity, begin, publish_records, read_service_target, run
from sevflow.models import ServiceSpec
from sevflow.tasks.git import inspect_repository, recent_history, resolve_version, restore_version, rollback_preview
from sevflow.tasks.host import build, deploy, missing_commands
from sevflow.tasks.http import HealthReport, health_before, verify_health
from sevflow.versions import CommitInfo, pick_last_good

PROCEDURE = "application-rollback"
VERIFICATION_FAILED = "VerificationFailed"


class RollbackReport(BaseModel):
    incident_id: str
    service: str
    rolled_back_from: str
    rolled_back_to: str
    new_head: str
    healthy: bool
    plan_digest: str


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
@procedure_parameters
def application_rollback(
    service: str,
    version: str | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
    dry_run: bool = False,
) -> RollbackReport | State:
    """Put the service's last good version back in place, after approval.

    Finds the newest commit marked good (tag pattern or trailer in the service target
    block) or takes `version`, shows the commits and diff being undone, waits for approval
    of that exact plan, then commits that version's tree on top of the branch (no history
    rewritten), builds, deploys and verifies health. If verification fails it offers, behind
    another approval, to return to the version that was running.

    Args:
        service: Name of the `sevflow Service Target` block of the service to roll back.
        version: Commit, tag or branch to roll back to; empty for the newest known-good version.
    """
    spec = read_service_target(service)  # an unknown service stops here, before anything
    ctx = begin(PROCEDURE, service, severity, incident_id, reason, policy, dry_run, spec.approval_policy)
    return run(ctx, roll_back_application, service, version)


def roll_back_application(ctx: Procedure, service: str, version: str | None = None) -> RollbackReport:
    """The runbook's Application Rollback, in the caller's run."""
    # 1. Identify the last good version; 2. ask for approval of exactly that plan.
    plan = ctx.approve(lambda reading: plan_rollback(ctx, service, version, reading), gate="rollback")

    # 3. Check out the last good version, build, deploy: every input from the approved plan.
    before = health_before(plan.verify, phase=plan.digest)
    restored = restore_version(plan.operation("git-restore"))
    if plan.operation("build"):
        build(plan.operation("build"), phase=plan.digest, at=restored.new_head)
    deploy(plan.operation("deploy"), phase=plan.digest, at=restored.new_head)

    # 4. Verify.
    health = verify_health(plan.verify, phase=plan.digest)
    restore = plan.operation("git-restore")
    if not health.ok:
        raise offer_return(ctx, service, restore.expected_head, restored.new_head, restore.source_sha, health)
    publish_records(
        ctx.incident, "resolved",
        [f"Rolled {service} back from {restore.expected_head[:12]} to {restore.source_sha[:12]} "
         f"(new commit {restored.new_head[:12]}, plan {plan.digest[:12]}), "
         f"{'built, ' if plan.operation('build') else ''}deployed; health checks pass."],
        ["Immediate fix applied", "System verified working"],
        root_cause_candidates=[f"the changes {restore.source_sha[:12]}..{restore.expected_head[:12]} of {service}, "
                               "undone by this rollback (its plan lists the commits)"],
        health_before=before.line(),
        health_after=health.line(),
    )
    return RollbackReport(incident_id=ctx.incident.incident_id, service=service,
                          rolled_back_from=restore.expected_head, rolled_back_to=restore.source_sha,
                          new_head=restored.new_head, healthy=True, plan_digest=plan.digest)


def plan_rollback(ctx: Procedure, service: str, version: str | None, reading: str) -> Plan:
    """Gather the facts (read-only) and decide the exact rollback."""
    spec = read_service_target(service, reading)
    _require_commands(spec)
    running = inspect_repository(spec)
    good = resolve_version(spec, version) if version else _last_good(spec, running.head_sha)
    preview = rollback_preview(spec, good.sha)
    if preview.files_changed == 0 and not preview.commits:
        raise NothingToDo(f"{service} already runs the content of {good.short}.")
    preflight(spec, ["build", "deploy"])  # what the change needs, before anyone is asked
    return plans.application_rollback_plan(spec, good, preview, ctx.run_key)


def _require_commands(spec: ServiceSpec) -> None:
    missing = missing_commands(spec, ["deploy"])
    if missing or not spec.health_check_urls:
        fields = missing + ([] if spec.health_check_urls else ["health_check_urls"])
        raise ConfigurationError(
            f"Service target {spec.block!r} cannot be rolled back: set {', '.join(fields)} in its block."
        )


def _last_good(spec: ServiceSpec, head_sha: str) -> CommitInfo:
    found = pick_last_good(recent_history(spec), head_sha, spec.good_tag_pattern, spec.good_trailer)
    if found is None:
        raise PreflightError(
            f"No known-good version of {spec.service} in the last 50 commits of {spec.branch} "
            f"(a tag matching {spec.good_tag_pattern!r} or a '{spec.good_trailer}: yes' trailer). "
            "Name one: sevflow run application-rollback --param service=... --param version=<commit>. "
            "Nothing was changed."
        )
    return found


def offer_return(
    ctx: Procedure, service: str, running_before: str, rolled_head: str, good: str, health: HealthReport,
) -> ProcedureEnd:
    """Verification failed: say so, and offer (gated) to return to what was running."""
    why = "; ".join(f"{c.url} → {c.status_code or c.error}" for c in health.checks if not c.ok)
    get_run_logger().error("Verification failed after rolling back to %s: %s", good[:12], why)

    def plan_return(reading: str) -> Plan:
        spec = read_service_target(service, reading)
        before = inspect_repository(spec)  # the rollback commit is the head now
        preview = rollback_preview(spec, running_before)
        return plans.return_to_previous_plan(spec, running_before, preview.to_tree, before.head_sha,
                                             f"{ctx.run_key}-return", why)

    try:
        plan = ctx.approve(plan_return, gate="return")
    except ProcedureEnd as end:
        resolution = [f"Rollback to {good[:12]} failed verification ({why}); return {end.outcome}; "
                      "the rolled-back version stays in place."]
        return ProcedureEnd("verification failed", resolution[0], resolution, Failed, VERIFICATION_FAILED)
    restored = restore_version(plan.operation("git-restore"))
    if plan.operation("build"):
        build(plan.operation("build"), phase=plan.digest, at=restored.new_head)
    deploy(plan.operation("deploy"), phase=plan.digest, at=restored.new_head)
    after = verify_health(plan.verify, phase=plan.digest)
    state = "healthy" if after.ok else "still unhealthy"
    message = (f"Rollback to {good[:12]} failed verification ({why}); returned to {running_before[:12]} "
               f"after approval (plan {plan.digest[:12]}); service {state}.")
    return ProcedureEnd("verification failed", message, [message], Failed, VERIFICATION_FAILED)
