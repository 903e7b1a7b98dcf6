"""Rollback: Application (EMERGENCY-PROCEDURES.md, "Application Rollback").

    git log --oneline -10                         identify last good version
    git checkout <commit-hash>                    (as a new commit: history is kept)
    npm run build && npm start                    build, deploy
    curl http://localhost:3000/api/health         verify
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import BaseModel

from sevflow import plans
from sevflow.blocks.service import ServiceTarget
from sevflow.errors import ConfigurationError, PreflightError
from sevflow.flows.outcomes import gate_closed
from sevflow.gate import require_approval
from sevflow.incident import open_incident, publish_records
from sevflow.models import IncidentContext, Severity
from sevflow.tasks.git import inspect_repository, recent_history, resolve_version, restore_version, rollback_preview
from sevflow.tasks.host import build, deploy, missing_commands
from sevflow.tasks.http import HealthReport, verify_health
from sevflow.versions import pick_last_good

PROCEDURE = "application-rollback"


class RollbackReport(BaseModel):
    incident_id: str
    service: str
    rolled_back_from: str
    rolled_back_to: str
    new_head: str
    healthy: bool


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
def application_rollback(
    service: str,
    version: str | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
) -> RollbackReport | State:
    """Put the service's last good version back in place, after approval.

    Finds the newest commit marked good (tag pattern or trailer in the service target
    block) or takes `version`, shows the commits and diff being undone, waits for approval,
    then commits that version's tree on top of the branch (no history rewritten), builds,
    deploys and verifies health. If verification fails it offers, behind another approval,
    to return to the version that was running. Needs a `sevflow Service Target` block named
    `service` and the approval policy block `policy`.
    """
    target = ServiceTarget.for_service(service)  # an unknown service stops here, before anything
    incident = open_incident(PROCEDURE, service, severity, incident_id, reason)
    _require_commands(target)

    # 1. Identify last good version (read-only; stops with a clear message before any change).
    running = inspect_repository(target)
    good = resolve_version(target, version) if version else _last_good(target, running.head_sha)
    preview = rollback_preview(target, good.sha)
    if preview.files_changed == 0 and not preview.commits:
        publish_records(incident, "nothing to do", [f"{service} already runs the content of {good.short}."], [])
        return Completed(name="NothingToRollBack", message=f"{service} already runs {good.short}")

    # 2. Ask for approval.
    change = plans.application_rollback_change(
        service, target.repository, target.branch, good, preview, target.build_command, target.deploy_command
    )
    decision = require_approval(incident, change, gate="rollback", policy=policy)
    if not decision.approved:
        return gate_closed(incident, decision, change.title)

    # 3. Check out the last good version, build, deploy.
    restored = restore_version(target, good.sha, running.head_sha, incident.flow_run_id)
    build(target, phase="rollback")
    deploy(target, phase="rollback")

    # 4. Verify.
    health = verify_health(target, phase="rollback")
    if health.ok:
        publish_records(
            incident, "resolved",
            [f"Rolled {service} back from {running.head_sha[:12]} to {good.short} "
             f"(new commit {restored.new_head[:12]}), built, deployed; health checks pass."],
            ["Immediate fix applied", "System verified working"],
        )
        return RollbackReport(incident_id=incident.incident_id, service=service, rolled_back_from=running.head_sha,
                              rolled_back_to=good.sha, new_head=restored.new_head, healthy=True)
    return _offer_return(incident, target, running.head_sha, restored.new_head, good.short, health, policy)


def _require_commands(target: ServiceTarget) -> None:
    missing = missing_commands(target, ["deploy"])
    if missing or not target.health_check_urls:
        fields = missing + ([] if target.health_check_urls else ["health_check_urls"])
        raise ConfigurationError(
            f"Service target {target.service!r} cannot be rolled back: set {', '.join(fields)} in its block."
        )


def _last_good(target: ServiceTarget, head_sha: str):
    found = pick_last_good(recent_history(target), head_sha, target.good_tag_pattern, target.good_trailer)
    if found is None:
        raise PreflightError(
            f"No known-good version of {target.service} in the last 50 commits of {target.branch} "
            f"(a tag matching {target.good_tag_pattern!r} or a '{target.good_trailer}: yes' trailer). "
            "Name one: sevflow run application-rollback --param service=... --param version=<commit>. "
            "Nothing was changed."
        )
    return found


def _offer_return(
    incident: IncidentContext, target: ServiceTarget, running_before: str, rolled_head: str,
    good_short: str, health: HealthReport, policy: str,
) -> State:
    """Verification failed: say so, and offer (gated) to return to what was running."""
    why = "; ".join(f"{c.url} → {c.status_code or c.error}" for c in health.checks if not c.ok)
    get_run_logger().error("Verification failed after rolling back to %s: %s", good_short, why)
    change = plans.return_to_previous_change(
        target.service, target.repository, target.branch, running_before, rolled_head,
        target.build_command, target.deploy_command, why,
    )
    decision = require_approval(incident, change, gate="return", policy=policy)
    if decision.approved:
        restore_version(target, running_before, rolled_head, f"{incident.flow_run_id}-return")
        build(target, phase="return")
        deploy(target, phase="return")
        after = verify_health(target, phase="return")
        state = "healthy" if after.ok else "still unhealthy"
        resolution = [f"Rollback to {good_short} failed verification ({why}); returned to "
                      f"{running_before[:12]} after approval; service {state}."]
    else:
        resolution = [f"Rollback to {good_short} failed verification ({why}); return "
                      f"{decision.outcome.value}; the rolled-back version stays in place."]
    publish_records(incident, "verification failed", resolution, [])
    return Failed(name="VerificationFailed", message=resolution[0])
