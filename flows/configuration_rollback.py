"""Rollback: Configuration (EMERGENCY-PROCEDURES.md, "Configuration Rollback").

    git log --oneline -- .env.example             config history
    git checkout <commit> -- .env.example         restore (committed: history is kept)
    then reload the service and verify health.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from prefect import flow
from prefect.states import Completed, Failed, State
from pydantic import BaseModel

from sevflow import plans
from sevflow.blocks.service import ServiceTarget
from sevflow.errors import ConfigurationError, PreflightError
from sevflow.flows.outcomes import gate_closed
from sevflow.gate import require_approval
from sevflow.incident import open_incident, publish_records
from sevflow.models import Severity
from sevflow.tasks.git import config_diff, config_history, inspect_repository, resolve_version, restore_config_file
from sevflow.tasks.host import missing_commands, reload_configuration
from sevflow.tasks.http import verify_health
from sevflow.versions import previous_config_version

PROCEDURE = "configuration-rollback"


class ConfigRollbackReport(BaseModel):
    incident_id: str
    service: str
    path: str
    restored_from: str
    new_head: str
    healthy: bool


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
def configuration_rollback(
    service: str,
    config_file: str | None = None,
    commit: str | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
) -> ConfigRollbackReport | State:
    """Restore a configuration file from an earlier commit, after approval.

    Shows the file's history and the diff, waits for approval, commits the earlier content
    as a new commit (only that file), runs the reload command and verifies health.
    `config_file` defaults to the block's only config file; `commit` to the version before
    the file's last change. Needs a `sevflow Service Target` block named `service`.
    """
    target = ServiceTarget.for_service(service)  # an unknown service stops here, before anything
    incident = open_incident(PROCEDURE, service, severity, incident_id, reason)
    path = _config_file(target, config_file)
    if missing_commands(target, ["reload"]) or not target.health_check_urls:
        raise ConfigurationError(
            f"Service target {service!r} needs reload_command and health_check_urls for a configuration rollback."
        )

    # 1. Config history, the version to restore, and the diff (read-only).
    running = inspect_repository(target)
    history = config_history(target, path)
    source = resolve_version(target, commit) if commit else previous_config_version(history)
    if source is None:
        raise PreflightError(f"{path} has only one version in {target.branch}: there is nothing earlier to restore.")
    diff = config_diff(target, path, source.sha)
    if diff.identical:
        publish_records(incident, "nothing to do", [f"{path} already equals its content at {source.short}."], [])
        return Completed(name="NothingToRollBack", message=f"{path} already matches {source.short}")

    # 2. Ask for approval.
    change = plans.configuration_rollback_change(service, target.repository, target.branch, diff, source,
                                                 target.reload_command)
    decision = require_approval(incident, change, gate="config", policy=policy)
    if not decision.approved:
        return gate_closed(incident, decision, change.title)

    # 3. Restore the file as a new commit, reload, verify.
    restored = restore_config_file(target, path, source.sha, running.head_sha, incident.flow_run_id)
    reload_configuration(target, phase="config")
    health = verify_health(target, phase="config")
    summary = (f"Restored {path} from {source.short} (new commit {restored.new_head[:12]}), "
               f"reloaded {service}; health checks {'pass' if health.ok else 'FAIL'}.")
    if not health.ok:
        publish_records(incident, "verification failed", [summary], ["Immediate fix applied"])
        return Failed(name="VerificationFailed", message=summary + " Run configuration-rollback with "
                      f"commit={running.head_sha[:12]} to return.")
    publish_records(incident, "resolved", [summary], ["Immediate fix applied", "System verified working"])
    return ConfigRollbackReport(incident_id=incident.incident_id, service=service, path=path,
                                restored_from=source.sha, new_head=restored.new_head, healthy=True)


def _config_file(target: ServiceTarget, requested: str | None) -> str:
    if requested:
        return requested  # config_history refuses a file the block does not list
    if len(target.config_files) == 1:
        return target.config_files[0]
    raise ConfigurationError(
        f"Name the config file to restore (config_file=...): {target.service!r} lists "
        f"{', '.join(target.config_files) or 'none (set config_files in its block)'}."
    )
