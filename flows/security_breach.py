"""Security Breach (EMERGENCY-PROCEDURES.md, "Security Breach"), on AWS.

    1. CONTAIN immediately     disable compromised credentials, block suspicious IPs,
                               isolate affected systems            (each behind its own gate)
    2. PRESERVE evidence       snapshots, logs exported, nothing modified or deleted
    3. ASSESS scope            what was accessed, what data exposed, how long
    4. NOTIFY                  alert humans immediately, document for legal/compliance
    5. REMEDIATE               rotate credentials, patch, review access logs   (gated)
    6. DOCUMENT                timeline, actions taken, lessons learned

A security breach is SEV-1 in the runbook: the run is opened at SEV-1 whatever `severity` says.
A rejected or unanswered gate ends the run there: nothing of that plan, and nothing after it,
is changed.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import BaseModel, Field

from sevflow import plans
from sevflow import records
from sevflow.errors import ConfigurationError
from sevflow.kit import NothingToDo, Plan, Procedure, Severity, begin, procedure_parameters, publish_records, run
from sevflow.models import AccessKeyFact, AwsAccountSpec, EvidenceRecord, InstanceFact
from sevflow.tasks.aws import (
    containment_time,
    deny_ips,
    disable_access_key,
    evidence_bucket_problem,
    export_logs,
    inspect_access_keys,
    inspect_instances,
    inspect_ip_set,
    inspect_nacl,
    isolate_instance,
    isolation_group_rules,
    key_activity,
    read_aws_target,
    review_access_logs,
    rotate_access_key,
    snapshot_volumes,
    waf_block_ips,
    write_manifest,
)
from sevflow.tasks.host import run_patch
from sevflow.tasks.notify import alert_humans

PROCEDURE = "security-breach"

CONTAIN = {"disable-access-key": disable_access_key, "deny-ips": deny_ips, "waf-block-ips": waf_block_ips,
           "isolate-instance": isolate_instance}
"""The step that carries out each kind of containment operation."""


class Suspects(BaseModel):
    """What the person (or the alert) says is compromised."""

    access_key_ids: list[str] = Field(default_factory=list)
    cidrs: list[str] = Field(default_factory=list)
    instance_ids: list[str] = Field(default_factory=list)
    since: datetime | None = None


class BreachReport(BaseModel):
    incident_id: str
    account: str
    plans: dict[str, str] = Field(description="gate → approved plan digest")
    disabled_keys: list[str]
    blocked: list[str]
    isolated: list[str]
    evidence: EvidenceRecord
    rotated: list[dict[str, str]]
    exposure_window: str


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
@procedure_parameters
def security_breach(
    service: str,
    access_key_ids: list[str] | None = None,
    suspicious_ips: list[str] | None = None,
    instance_ids: list[str] | None = None,
    since: datetime | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
    dry_run: bool = False,
) -> BreachReport | State:
    """Contain a security breach in an AWS account, preserve evidence, assess, notify, remediate
    and document it, asking for approval before every change.

    Disables the compromised IAM access keys, denies the suspicious IPs in the network ACL (and
    the WAF IP set, if configured), isolates the affected instances with the isolation security
    group; snapshots their volumes and exports the log groups into the Object Lock evidence
    bucket with a SHA-256 manifest; reads what the keys did (CloudTrail, where available);
    alerts the notification blocks; rotates the keys and runs the patch command. A security
    breach always runs at SEV-1.

    Args:
        service: Name of the `sevflow AWS Account Target` block of the breached AWS account (called
            `service` like every procedure's target, so an alert rule's `service` names it).
        access_key_ids: IAM access key ids believed compromised (AKIA...).
        suspicious_ips: IP addresses or networks to block (203.0.113.7, 198.51.100.0/24).
        instance_ids: EC2 instances believed compromised, to isolate and snapshot.
        since: When the breach may have started (UTC); empty: from the keys' first recorded use.
    """
    account = service
    spec = read_aws_target(account)  # an unknown account stops here, before anything
    if severity is not Severity.SEV1:
        get_run_logger().warning("A security breach is SEV-1 in the runbook; running at SEV-1, not %s.", severity.value)
    try:
        cidrs = plans.normalise_ips(suspicious_ips or [])
    except ValueError as exc:
        raise ConfigurationError(f"{exc}; nothing was changed.") from exc
    suspects = Suspects(access_key_ids=sorted(set(access_key_ids or [])), cidrs=cidrs,
                        instance_ids=sorted(set(instance_ids or [])), since=since)
    ctx = begin(PROCEDURE, account, Severity.SEV1, incident_id, reason, policy, dry_run, spec.approval_policy)
    return run(ctx, respond_to_breach, account, suspects)


def respond_to_breach(ctx: Procedure, account: str, suspects: Suspects) -> BreachReport:
    """The runbook's Security Breach, in the caller's run."""
    spec = read_aws_target(account)
    _preflight(spec, suspects)
    if not ctx.dry_run:
        # 4. NOTIFY, first: humans hear of it before anything is asked or changed.
        alert_humans(ctx.incident.incident_id, spec.notify, *records.breach_alert(
            ctx.incident.incident_id, account, ctx.incident.severity, "containment starting", _known(suspects)))
    planners = {
        "disable-keys": (bool(suspects.access_key_ids), lambda r: plan_disable_keys(account, suspects, r)),
        "block-ips": (bool(suspects.cidrs), lambda r: plan_block_ips(account, suspects, r)),
        "isolate": (bool(suspects.instance_ids), lambda r: plan_isolation(account, suspects, r)),
    }
    if ctx.dry_run:
        shown = [(gate, plan(""))
                 for gate, (wanted, plan) in planners.items() if wanted]
        shown.append(("remediate", plan_remediation(ctx, account, suspects, "")))
        shown = [(g, p) for g, p in shown if p.operations]
        ctx.preview(shown)
        raise NothingToDo("Dry run: everything named is already contained and there is nothing to rotate or patch.")

    # 1. CONTAIN: each change behind its own gate, made as soon as it is approved; a change
    # with nothing left to do (a key already inactive) asks nothing.
    approved: dict[str, Plan] = {}
    for gate, (wanted, planner) in planners.items():
        if not (wanted and planner("").operations):
            continue
        plan = approved[gate] = ctx.approve(planner, gate=gate)
        for op in plan.operations:
            CONTAIN[op.op](op)
    contained_at = containment_time(ctx.incident.incident_id)

    # 2. PRESERVE evidence, before anything is cleaned; it is only ever added to.
    keys = _keys(spec, suspects, "")
    instances = _instances(spec, suspects, "")
    snapshots = snapshot_volumes(spec.access, ctx.incident.incident_id, ctx.run_key, instances)
    state = {"plans": {g: p.model_dump(mode="json") for g, p in approved.items()},
             "keys": [k.model_dump(mode="json") for k in keys],
             "instances": [i.model_dump(mode="json") for i in instances]}
    objects = export_logs(spec.access, spec.evidence_bucket, spec.evidence_retention_days, ctx.incident.incident_id,
                          spec.log_groups, suspects.since, state)
    manifest = write_manifest(spec.access, spec.evidence_bucket, spec.evidence_retention_days,
                              ctx.incident.incident_id, objects, snapshots)
    evidence = EvidenceRecord(bucket=spec.evidence_bucket, retain_until=min(o.retain_until for o in objects), snapshots=snapshots,
                              objects=objects, manifest=manifest)

    # 3. ASSESS scope.
    scope = plans.assess_scope(key_activity(spec.access, keys, suspects.since, contained_at), contained_at,
                               suspects.since)

    # 4. NOTIFY what is known now.
    alert_humans(ctx.incident.incident_id, spec.notify, *records.breach_alert(
        ctx.incident.incident_id, account, ctx.incident.severity, "contained, evidence preserved, scope assessed",
        [*_known(suspects), f"Exposure window: {scope.window_text}",
         f"Resources touched: {', '.join(scope.resources_touched) or 'none recorded'}",
         *[f"Not known: {g}" for g in scope.gaps],
         f"Evidence: s3://{evidence.bucket}/{ctx.incident.incident_id}/ (manifest sha256 {manifest.sha256})",
         f"Run: {ctx.incident.run_url or ctx.incident.flow_run_id}"]))

    # 5. REMEDIATE, behind its gate: rotate, then patch; then the access-log review.
    rotations: list[dict[str, str]] = []
    remediation = plan_remediation(ctx, account, suspects, "")
    if remediation.operations:
        approved["remediate"] = plan = ctx.approve(lambda r: plan_remediation(ctx, account, suspects, r), gate="remediate")
        rotations = [rotate_access_key(op) for op in plan.operations_of("rotate-access-key")]
        for op in plan.operations_of("patch-command"):
            run_patch(op)
    review_access_logs(ctx.incident.incident_id, scope)

    # 6. DOCUMENT.
    publish_records(
        ctx.incident, "resolved",
        [f"{plan.title} (plan {plan.digest[:12]}); undo: {plan.undo}" for plan in approved.values()]
        + [f"Evidence in s3://{evidence.bucket}/{ctx.incident.incident_id}/ locked until "
           f"{evidence.retain_until.isoformat()}; manifest sha256 {manifest.sha256}"],
        ["Immediate fix applied", "Team notified"] if spec.notify else ["Immediate fix applied"],
        impact=f"Security breach in AWS account {account}; exposure window {scope.window_text}",
        sections=records.breach_sections(approved, evidence, scope, rotations, ctx.incident.opened_at),
    )
    return BreachReport(
        incident_id=ctx.incident.incident_id, account=account, plans={g: p.digest for g, p in approved.items()},
        disabled_keys=[op.access_key_id for p in approved.values() for op in p.operations_of("disable-access-key")],
        blocked=suspects.cidrs, isolated=[op.instance_id for p in approved.values()
                                          for op in p.operations_of("isolate-instance")],
        evidence=evidence, rotated=rotations, exposure_window=scope.window_text,
    )


# --- planners: gather the facts (read-only) and decide the exact change -------------------


def plan_disable_keys(account: str, suspects: Suspects, reading: str) -> Plan:
    spec = read_aws_target(account, reading)
    return plans.disable_keys_plan(spec, _keys(spec, suspects, reading))


def plan_block_ips(account: str, suspects: Suspects, reading: str) -> Plan:
    spec = read_aws_target(account, reading)
    acl = inspect_nacl(spec.access, spec.network_acl_id, reading) if spec.network_acl_id else None
    ip_set = inspect_ip_set(spec.access, spec.waf_ip_set, reading) if spec.waf_ip_set else None
    return plans.block_ips_plan(spec, suspects.cidrs, acl, ip_set)


def plan_isolation(account: str, suspects: Suspects, reading: str) -> Plan:
    spec = read_aws_target(account, reading)
    return plans.isolate_plan(spec, _instances(spec, suspects, reading))


def plan_remediation(ctx: Procedure, account: str, suspects: Suspects, reading: str) -> Plan:
    spec = read_aws_target(account, reading)
    # Read after containment: the keys are inactive now, and the plan says so.
    keys = inspect_access_keys(spec.access, suspects.access_key_ids, f"remediate:{reading}") if suspects.access_key_ids else []
    return plans.remediate_plan(spec, keys, ctx.run_key)


def _keys(spec: AwsAccountSpec, suspects: Suspects, reading: str) -> list[AccessKeyFact]:
    return inspect_access_keys(spec.access, suspects.access_key_ids, reading) if suspects.access_key_ids else []


def _instances(spec: AwsAccountSpec, suspects: Suspects, reading: str) -> list[InstanceFact]:
    return inspect_instances(spec.access, suspects.instance_ids, reading) if suspects.instance_ids else []


def _preflight(spec: AwsAccountSpec, suspects: Suspects) -> None:
    """Bad input stops before any change, with a sentence that says what to do."""
    if not (suspects.access_key_ids or suspects.cidrs or suspects.instance_ids):
        raise ConfigurationError("Name what is compromised: access_key_ids, suspicious_ips and/or instance_ids.")
    missing = []
    if suspects.cidrs and not (spec.network_acl_id or spec.waf_ip_set):
        missing.append("network_acl_id (or a WAF IP set) to block IPs with")
    if suspects.instance_ids and not spec.isolation_group_id:
        missing.append("isolation_group_id to isolate instances with")
    if missing:
        raise ConfigurationError(f"AWS account target {spec.block!r} cannot contain this breach: set "
                                 f"{'; '.join(missing)}. Nothing was changed.")
    problem = evidence_bucket_problem(spec.access, spec.evidence_bucket)
    if problem:
        raise ConfigurationError(f"Evidence cannot be preserved: {problem}. Nothing was changed.")
    if suspects.instance_ids and spec.isolation_group_id:
        rules = isolation_group_rules(spec.access, spec.isolation_group_id)
        if rules:
            raise ConfigurationError(
                f"The isolation group {spec.isolation_group_id} allows traffic ({'; '.join(rules)}): remove every "
                "inbound and outbound rule from it, so an isolated host can reach nothing. Nothing was changed.")


def _known(suspects: Suspects) -> list[str]:
    return [f"Compromised access keys: {', '.join(suspects.access_key_ids) or 'none named'}",
            f"Suspicious IPs: {', '.join(suspects.cidrs) or 'none named'}",
            f"Affected instances: {', '.join(suspects.instance_ids) or 'none named'}",
            f"Since: {suspects.since.isoformat() if suspects.since else 'unknown'}"]

