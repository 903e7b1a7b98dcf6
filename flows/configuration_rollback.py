"""Rollback: Configuration (EMERGENCY-PROCEDURES.md, "Configuration Rollback").

    git log --oneline -- .env.example             config history
    git checkout <commit> -- .env.example         restore (committed: history is kept)
    then reload the service and verify health.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from prefect import flow
from prefect.states import Failed, State
from pydantic import BaseModel

from sevflow import plans
from sevflow.errors import ConfigurationError, PreflightError
from sevflow.kit import NothingToDo, preflight, procedure_parameters, Plan, Procedure, ProcedureEnd, Severity, begin, publish_records, read_service_target, run
from sevflow.models import ServiceSpec
from sevflow.tasks.git import config_diff, config_history, resolve_version, restore_config_file
from sevflow.tasks.host import missing_commands, reload_configuration
from sevflow.tasks.http import health_before, verify_health
from sevflow.versions import previous_config_version

PROCEDURE = "configuration-rollback"


class ConfigRollbackReport(BaseModel):
    incident_id: str
    service: str
    path: str
    restored_from: str
    new_head: str
    healthy: bool
    plan_digest: str


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
@procedure_parameters
def configuration_rollback(
    service: str,
    config_file: str | None = None,
    commit: str | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
    dry_run: bool = False,
) -> ConfigRollbackReport | State:
    """Restore a configuration file from an earlier commit, after approval.

    Shows the file's history and the diff, waits for approval of that exact plan, commits
    the earlier content as a new commit (only that file), runs the reload command and
    verifies health.

    Args:
        service: Name of the `sevflow Service Target` block of the service.
        config_file: The file to restore (a path its block lists); empty if the block lists one.
        commit: Commit to restore it from; empty for the version before the file's last change.
    """
    spec = read_service_target(service)  # an unknown service stops here, before anything
    ctx = begin(PROCEDURE, service, severity, incident_id, reason, policy, dry_run, spec.approval_policy)
    return run(ctx, roll_back_configuration, service, config_file, commit)


def roll_back_configuration(
    ctx: Procedure, service: str, config_file: str | None = None, commit: str | None = None,
) -> ConfigRollbackReport:
    """The runbook's Configuration Rollback, in the caller's run."""
    # 1. Config history, the version to restore and the diff; 2. approval of exactly that.
    plan = ctx.approve(lambda reading: plan_restore(service, config_file, commit, reading, ctx.run_key),
                       gate="config")

    # 3. Restore the file as a new commit, reload, verify: every input from the approved plan.
    restore = plan.operation("git-restore")
    before = health_before(plan.verify, phase=plan.digest)
    restored = restore_config_file(restore)
    reload_configuration(plan.operation("reload"), phase=plan.digest, at=restored.new_head)
    health = verify_health(plan.verify, phase=plan.digest)
    summary = (f"Restored {restore.path} from {restore.source_sha[:12]} (new commit {restored.new_head[:12]}, "
               f"plan {plan.digest[:12]}), reloaded {service}; health checks {'pass' if health.ok else 'FAIL'}.")
    if not health.ok:
        raise ProcedureEnd("verification failed", summary + " Run configuration-rollback with "
                           f"commit={restore.expected_head[:12]} to return.", [summary], Failed,
                           "VerificationFailed", proven=["Immediate fix applied"])
    publish_records(ctx.incident, "resolved", [summary], ["Immediate fix applied", "System verified working"],
                    root_cause_candidates=[f"the change to {restore.path} since {restore.source_sha[:12]}, "
                                           "reversed by this restore (its plan shows the diff)"],
                    health_before=before.line(), health_after=health.line())
    return ConfigRollbackReport(incident_id=ctx.incident.incident_id, service=service, path=restore.path or "",
                                restored_from=restore.source_sha, new_head=restored.new_head, healthy=True,
                                plan_digest=plan.digest)


def plan_restore(service: str, config_file: str | None, commit: str | None, reading: str, run_key: str) -> Plan:
    """Gather the facts (read-only) and decide the exact restore."""
    spec = read_service_target(service, reading)
    path = _config_file(spec, config_file)
    if missing_commands(spec, ["reload"]) or not spec.health_check_urls:
        raise ConfigurationError(
            f"Service target {spec.block!r} needs reload_command and health_check_urls for a configuration rollback."
        )
    history = config_history(spec, path)
    source = resolve_version(spec, commit) if commit else previous_config_version(history)
    if source is None:
        raise PreflightError(f"{path} has only one version in {spec.branch}: there is nothing earlier to restore.")
    diff = config_diff(spec, path, source.sha)
    if diff.identical:
        raise NothingToDo(f"{path} already equals its content at {source.short}.")
    preflight(spec, ["reload"])  # what the change needs, before anyone is asked
    return plans.configuration_rollback_plan(spec, diff, source, run_key)


def _config_file(spec: ServiceSpec, requested: str | None) -> str:
    if requested:
        return requested  # config_history refuses a file the block does not list
    if len(spec.config_files) == 1:
        return spec.config_files[0]
    raise ConfigurationError(
        f"Name the config file to restore (config_file=...): {spec.block!r} lists "
        f"{', '.join(spec.config_files) or 'none (set config_files in its block)'}."
    )
