"""AWS during a security breach: IAM keys, network ACLs, WAFv2 IP sets, security groups,
EBS snapshots, CloudWatch Logs, S3 evidence with Object Lock, CloudTrail, STS.

Clients come from the prefect-aws `AwsCredentials` block the account target names (its
endpoint and client parameters included), with finite connect and read timeouts from a
botocore `Config`. The keys are unwrapped by that block only; sevflow never logs them.

Mutating steps take their operation from the approved plan and read the state they change
first: if it is already as the plan wants, they do nothing (a replay or re-run is safe); if
it is neither that nor what the plan assumed, they raise DriftError and change nothing.

Evidence is only ever added: every object is written once, locked in compliance mode, and an
existing key is never written again. There is no delete call in this module.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prefect.logging.loggers import get_logger, get_run_logger
from prefect.exceptions import MissingContextError

from sevflow.blocks.aws_account import AwsAccountTarget
from sevflow.errors import ConfigurationError, DriftError, PreflightError, SevflowError
from sevflow.models import (
    AccessKeyFact,
    ActivityEvent,
    AwsAccess,
    AwsAccountSpec,
    AwsProbe,
    DenyIps,
    DisableAccessKey,
    EniGroups,
    EvidenceObject,
    InstanceFact,
    IpSetFact,
    IsolateInstance,
    KeyActivity,
    NaclEntryFact,
    NaclFact,
    RotateAccessKey,
    ScopeAssessment,
    WafBlockIps,
    WafIpSetRef,
    utcnow,
)
from sevflow.records import access_log_review
from sevflow.tasks.common import step


class ActivityUnavailable(SevflowError):
    """The audit source (CloudTrail) could not be read: not enabled, not allowed, not there."""


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.tasks.aws")


# --- clients ------------------------------------------------------------------------------


def client(aws: AwsAccess, service: str) -> Any:
    """A boto3 client for `service` from the AwsCredentials block, with finite timeouts."""
    from prefect_aws import AwsCredentials

    try:
        credentials = AwsCredentials.load(aws.credentials_block)
    except ValueError as exc:
        raise ConfigurationError(
            f"No AwsCredentials block named {aws.credentials_block!r}: create it (Prefect UI, Blocks, "
            "AWS Credentials) or fix `credentials_block` on the sevflow AWS Account Target."
        ) from exc
    return _client_from(credentials, aws, service)  # type: ignore[arg-type]


def _client_from(credentials: Any, aws: AwsAccess, service: str) -> Any:
    params = credentials.aws_client_parameters.get_params_override()
    timeouts = Config(connect_timeout=aws.connect_timeout_seconds, read_timeout=aws.read_timeout_seconds,
                      retries={"max_attempts": 3, "mode": "standard"})
    given = params.pop("config", None)
    config = given.merge(timeouts) if isinstance(given, Config) else timeouts
    return credentials.get_boto3_session().client(service, region_name=aws.region, config=config, **params)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# --- the account target -------------------------------------------------------------------


@step("read the AWS account target", timeline=False)
def read_aws_target(account: str, reading: str = "") -> AwsAccountSpec:
    """The block `account` as it is now. Persisted per run and reading, like the service
    target: a plan made again after drift reads afresh. Changes nothing."""
    return AwsAccountTarget.for_account(account).spec(account).model_copy(update={"reading": reading})


def aws_target_changes(planned: AwsAccountSpec) -> list[str]:
    try:
        live = AwsAccountTarget.load(planned.block)
    except ValueError:
        return [f"the AWS account target block {planned.block!r} was deleted"]
    return live.spec(planned.block).changes_since(planned)  # type: ignore[attr-defined]


# --- reading state (facts for plans, and the probes preconditions re-read) ----------------


@step("CONTAIN: find the compromised keys")
def inspect_access_keys(aws: AwsAccess, access_key_ids: list[str], reading: str = "") -> list[AccessKeyFact]:
    """Each key's owner, status, creation and last use. An unknown key stops the procedure."""
    iam = client(aws, "iam")
    facts = []
    for key_id in access_key_ids:
        try:
            used = iam.get_access_key_last_used(AccessKeyId=key_id)
        except ClientError as exc:
            raise ConfigurationError(
                f"Access key {key_id} is not known in this account ({_code(exc)}): check the key id; nothing was changed."
            ) from exc
        user = used.get("UserName")
        if not user:
            raise ConfigurationError(f"Access key {key_id} belongs to no IAM user (a root key?): disable it by hand.")
        keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        mine = next((k for k in keys if k["AccessKeyId"] == key_id), None)
        if mine is None:
            raise ConfigurationError(f"Access key {key_id} is not listed for user {user}; nothing was changed.")
        last = used.get("AccessKeyLastUsed") or {}
        facts.append(AccessKeyFact(
            access_key_id=key_id, user=user, status=mine["Status"], created_at=mine.get("CreateDate"),
            last_used_at=last.get("LastUsedDate"), last_used_service=last.get("ServiceName", ""),
            last_used_region=last.get("Region", ""), user_key_count=len(keys),
        ))
    return facts


@step("CONTAIN: read the network ACL")
def inspect_nacl(aws: AwsAccess, network_acl_id: str, reading: str = "") -> NaclFact:
    return _nacl(client(aws, "ec2"), network_acl_id)


def _nacl(ec2: Any, network_acl_id: str) -> NaclFact:
    try:
        found = ec2.describe_network_acls(NetworkAclIds=[network_acl_id])["NetworkAcls"]
    except ClientError as exc:
        raise ConfigurationError(f"Network ACL {network_acl_id} cannot be read ({_code(exc)}): fix "
                                 "`network_acl_id` on the AWS account target.") from exc
    entries = [NaclEntryFact(rule_number=e["RuleNumber"], egress=e["Egress"], action=e["RuleAction"],
                             cidr=e.get("CidrBlock") or e.get("Ipv6CidrBlock", ""), protocol=str(e.get("Protocol", "-1")))
               for e in found[0].get("Entries", [])]
    return NaclFact(network_acl_id=network_acl_id, entries=entries)


@step("CONTAIN: read the WAF IP set")
def inspect_ip_set(aws: AwsAccess, ref: WafIpSetRef, reading: str = "") -> IpSetFact:
    got = _ip_set(client(aws, "wafv2"), ref)
    return IpSetFact(ref=ref, version=got["IPSet"]["IPAddressVersion"], addresses=sorted(got["IPSet"]["Addresses"]))


def _ip_set(waf: Any, ref: WafIpSetRef) -> dict[str, Any]:
    try:
        return waf.get_ip_set(Name=ref.name, Id=ref.id, Scope=ref.scope)
    except ClientError as exc:
        raise ConfigurationError(f"WAFv2 IP set {ref.name} ({ref.id}) cannot be read ({_code(exc)}): fix "
                                 "`waf_ip_set_name`/`waf_ip_set_id` on the AWS account target.") from exc


@step("CONTAIN: find the affected instances")
def inspect_instances(aws: AwsAccess, instance_ids: list[str], reading: str = "") -> list[InstanceFact]:
    """Each instance's network interfaces (with their security groups) and EBS volumes."""
    ec2 = client(aws, "ec2")
    try:
        reservations = ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
    except ClientError as exc:
        raise ConfigurationError(f"Instances {', '.join(instance_ids)} cannot be read ({_code(exc)}): check the ids; "
                                 "nothing was changed.") from exc
    by_id = {i["InstanceId"]: i for r in reservations for i in r["Instances"]}
    missing = [i for i in instance_ids if i not in by_id]
    if missing:
        raise ConfigurationError(f"Instances not found: {', '.join(missing)}; nothing was changed.")
    facts = []
    for instance_id in instance_ids:
        inst = by_id[instance_id]
        enis = [EniGroups(network_interface_id=n["NetworkInterfaceId"], groups=sorted(g["GroupId"] for g in n["Groups"]))
                for n in inst.get("NetworkInterfaces", [])]
        volumes = [m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m]
        facts.append(InstanceFact(instance_id=instance_id, state=inst["State"]["Name"],
                                  interfaces=sorted(enis, key=lambda e: e.network_interface_id), volumes=sorted(volumes)))
    return facts


@step("CONTAIN: check the isolation group")
def isolation_group_rules(aws: AwsAccess, group_id: str) -> list[str]:
    """The rules the isolation group has (it must have none: isolation allows nothing)."""
    try:
        group = client(aws, "ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    except ClientError as exc:
        raise ConfigurationError(f"Isolation group {group_id} cannot be read ({_code(exc)}): fix "
                                 "`isolation_group_id` on the AWS account target.") from exc
    rules = [f"inbound {p.get('IpProtocol')} {p.get('FromPort', '')}-{p.get('ToPort', '')}" for p in group.get("IpPermissions", [])]
    rules += [f"outbound {p.get('IpProtocol')} {p.get('FromPort', '')}-{p.get('ToPort', '')}"
              for p in group.get("IpPermissionsEgress", [])]
    return rules


@step("PRESERVE: check the evidence bucket")
def evidence_bucket_problem(aws: AwsAccess, bucket: str) -> str:
    """Why the bucket cannot hold evidence (empty when it can): it must exist with Object Lock."""
    try:
        config = client(aws, "s3").get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except ClientError as exc:
        return (f"the evidence bucket {bucket!r} has no Object Lock ({_code(exc)}): create a bucket with Object Lock "
                "enabled and name it in `evidence_bucket`")
    if config.get("ObjectLockEnabled") != "Enabled":
        return f"the evidence bucket {bucket!r} does not have Object Lock enabled"
    return ""


def probe(aws: AwsAccess, what: AwsProbe) -> list[str]:
    """The state `what` names, as it is now (sorted strings, comparable with `what.value`)."""
    if what.kind == "access-key-status":
        keys = client(aws, "iam").list_access_keys(UserName=what.context["user"])["AccessKeyMetadata"]
        return [k["Status"] for k in keys if k["AccessKeyId"] == what.subject] or ["deleted"]
    if what.kind == "nacl-entries":
        return _nacl(client(aws, "ec2"), what.subject).lines()
    if what.kind == "eni-groups":
        eni = client(aws, "ec2").describe_network_interfaces(NetworkInterfaceIds=[what.subject])["NetworkInterfaces"][0]
        return sorted(g["GroupId"] for g in eni["Groups"])
    ref = WafIpSetRef(name=what.context["name"], id=what.subject, scope=what.context.get("scope", "REGIONAL"))  # type: ignore[arg-type]
    return sorted(_ip_set(client(aws, "wafv2"), ref)["IPSet"]["Addresses"])


def aws_drift(aws: AwsAccess, what: AwsProbe) -> str:
    """A sentence saying how `what` moved since the plan, or empty if it still holds."""
    now = probe(aws, what)
    if now == what.value:
        return ""
    return f"{what.kind} of {what.subject} was {what.value} when planned, is {now} now"


# --- CONTAIN (mutating: only from an approved plan) ---------------------------------------


@step("CONTAIN: disable compromised credentials", mutating=True)
def disable_access_key(op: DisableAccessKey) -> str:
    """Set the key Inactive. Returns its status after (read back)."""
    iam = client(op.aws, "iam")
    now = probe(op.aws, AwsProbe(kind="access-key-status", subject=op.access_key_id, context={"user": op.user}, value=[]))
    if now == ["Inactive"]:
        return "Inactive"
    if now != [op.prior_status]:
        raise DriftError(f"Access key {op.access_key_id} of {op.user} is {now[0]}, the plan assumed "
                         f"{op.prior_status}: nothing was changed.")
    _logger().info("Disabling access key %s of %s", op.access_key_id, op.user)
    iam.update_access_key(UserName=op.user, AccessKeyId=op.access_key_id, Status="Inactive")
    return probe(op.aws, AwsProbe(kind="access-key-status", subject=op.access_key_id, context={"user": op.user}, value=[]))[0]


@step("CONTAIN: block suspicious IPs (network ACL)", mutating=True)
def deny_ips(op: DenyIps) -> list[str]:
    """Add the planned deny entries. Returns the ACL's entries after."""
    ec2 = client(op.aws, "ec2")
    acl = _nacl(ec2, op.network_acl_id)
    existing = {(e.rule_number, e.egress): e for e in acl.entries}
    todo = []
    for entry in op.entries:
        found = existing.get((entry.rule_number, entry.egress))
        if found is None:
            todo.append(entry)
        elif not (found.action == "deny" and found.cidr == entry.cidr):
            raise DriftError(f"Network ACL {op.network_acl_id} rule {entry.rule_number} is taken since the plan "
                             f"({found.line()}): nothing was changed.")
    for entry in todo:
        cidr = {"Ipv6CidrBlock": entry.cidr} if ":" in entry.cidr else {"CidrBlock": entry.cidr}
        _logger().info("Network ACL %s: deny %s (%s, rule %d)", op.network_acl_id, entry.cidr,
                       "egress" if entry.egress else "ingress", entry.rule_number)
        ec2.create_network_acl_entry(NetworkAclId=op.network_acl_id, RuleNumber=entry.rule_number, Protocol="-1",
                                     RuleAction="deny", Egress=entry.egress, **cidr)
    return _nacl(ec2, op.network_acl_id).lines()


@step("CONTAIN: block suspicious IPs (WAF)", mutating=True)
def waf_block_ips(op: WafBlockIps) -> list[str]:
    """Add the planned addresses to the IP set. Returns its addresses after."""
    waf = client(op.aws, "wafv2")
    got = _ip_set(waf, op.ip_set)
    now = sorted(got["IPSet"]["Addresses"])
    if set(op.add) <= set(now):
        return now
    if now != sorted(op.prior_addresses):
        raise DriftError(f"WAF IP set {op.ip_set.name} changed since the plan ({sorted(op.prior_addresses)} → {now}): "
                         "nothing was changed.")
    _logger().info("WAF IP set %s: adding %s", op.ip_set.name, ", ".join(op.add))
    waf.update_ip_set(Name=op.ip_set.name, Id=op.ip_set.id, Scope=op.ip_set.scope,
                      Addresses=sorted({*now, *op.add}), LockToken=got["LockToken"])
    return sorted(_ip_set(waf, op.ip_set)["IPSet"]["Addresses"])


@step("CONTAIN: isolate affected systems", mutating=True)
def isolate_instance(op: IsolateInstance) -> list[EniGroups]:
    """Give each of the instance's interfaces only the isolation group. Returns them after."""
    ec2 = client(op.aws, "ec2")
    wanted = [op.isolation_group_id]
    for eni in op.interfaces:
        what = AwsProbe(kind="eni-groups", subject=eni.network_interface_id, value=[])
        now = probe(op.aws, what)
        if now == wanted:
            continue
        if now != sorted(eni.groups):
            raise DriftError(f"Interface {eni.network_interface_id} of {op.instance_id} has groups {now}, the plan "
                             f"assumed {sorted(eni.groups)}: nothing more was changed.")
        _logger().info("Isolating %s: interface %s gets only %s", op.instance_id, eni.network_interface_id,
                       op.isolation_group_id)
        ec2.modify_network_interface_attribute(NetworkInterfaceId=eni.network_interface_id, Groups=wanted)
    return [EniGroups(network_interface_id=e.network_interface_id,
                      groups=probe(op.aws, AwsProbe(kind="eni-groups", subject=e.network_interface_id, value=[])))
            for e in op.interfaces]


# --- PRESERVE (adds evidence; never deletes or overwrites it) -----------------------------


@step("PRESERVE: snapshot volumes", mutating=True)
def snapshot_volumes(aws: AwsAccess, incident_id: str, run_key: str, instances: list[InstanceFact]) -> dict[str, str]:
    """An EBS snapshot of every volume of the affected instances, tagged with the incident and
    the run (a replay finds the run's snapshots instead of making more). volume → snapshot."""
    ec2 = client(aws, "ec2")
    made: dict[str, str] = {}
    for inst in instances:
        for volume in inst.volumes:
            found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
                {"Name": "volume-id", "Values": [volume]}, {"Name": "tag:sevflow-run", "Values": [run_key]}])["Snapshots"]
            if found:
                made[volume] = found[0]["SnapshotId"]
                continue
            snap = ec2.create_snapshot(
                VolumeId=volume, Description=f"sevflow evidence: incident {incident_id}, {inst.instance_id}",
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": [
                    {"Key": "sevflow-incident", "Value": incident_id}, {"Key": "sevflow-run", "Value": run_key},
                    {"Key": "sevflow-instance", "Value": inst.instance_id}]}],
            )
            made[volume] = snap["SnapshotId"]
    return made


def retain_until(days: int) -> datetime:
    return (utcnow() + timedelta(days=days)).replace(microsecond=0)


def put_evidence(s3: Any, bucket: str, key: str, body: bytes, until: datetime, what: str) -> EvidenceObject:
    """Write one evidence object, locked in compliance mode until `until`. An object already
    at `key` is never written again: the same bytes are accepted as done, other bytes refused."""
    digest = hashlib.sha256(body).hexdigest()
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise
        head = None
    if head is not None:
        if head.get("Metadata", {}).get("sha256") == digest:
            return EvidenceObject(key=key, sha256=digest, size=len(body), version_id=head.get("VersionId", ""), what=what,
                                  retain_until=head.get("ObjectLockRetainUntilDate") or until)
        raise PreflightError(f"Evidence object s3://{bucket}/{key} already exists with other content; evidence is "
                             "never overwritten. Nothing was written.")
    put = s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256", Metadata={"sha256": digest},
                        ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
    return EvidenceObject(key=key, sha256=digest, size=len(body), version_id=put.get("VersionId", ""), what=what,
                          retain_until=until)


def _log_events(logs: Any, group: str, start: datetime | None) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {"logGroupName": group}
    if start is not None:
        kwargs["startTime"] = int(start.timestamp() * 1000)
    events: list[dict[str, Any]] = []
    for page in logs.get_paginator("filter_log_events").paginate(**kwargs):
        events += [{k: e.get(k) for k in ("timestamp", "ingestionTime", "logStreamName", "eventId", "message")}
                   for e in page.get("events", [])]
    return sorted(events, key=lambda e: (e["timestamp"] or 0, e["eventId"] or ""))


@step("PRESERVE: export logs", mutating=True)
def export_logs(aws: AwsAccess, bucket: str, retention_days: int, incident_id: str, log_groups: list[str],
                since: datetime | None, state: dict[str, Any]) -> list[EvidenceObject]:
    """Each log group's events (from `since`) and the state found before containment, as
    locked objects under `<incident>/` in the evidence bucket."""
    s3, logs = client(aws, "s3"), client(aws, "logs")
    until = retain_until(retention_days)
    kept = [put_evidence(s3, bucket, f"{incident_id}/state-before-containment.json",
                         json.dumps(state, sort_keys=True, indent=1, default=str).encode(), until,
                         "the state of everything containment changed, before it changed")]
    for group in log_groups:
        try:
            events = _log_events(logs, group, since)
        except ClientError as exc:
            raise ConfigurationError(f"Log group {group!r} cannot be read ({_code(exc)}): fix `log_groups`.") from exc
        body = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode()
        name = group.strip("/").replace("/", "_") or "root"
        kept.append(put_evidence(s3, bucket, f"{incident_id}/logs/{name}.jsonl", body, until,
                                 f"CloudWatch log group {group}: {len(events)} events"))
    _logger().info("Evidence: %d objects in s3://%s/%s/ locked until %s", len(kept), bucket, incident_id, until.isoformat())
    return kept


@step("PRESERVE: write the evidence manifest", mutating=True)
def write_manifest(aws: AwsAccess, bucket: str, retention_days: int, incident_id: str,
                   objects: list[EvidenceObject], snapshots: dict[str, str]) -> EvidenceObject:
    """`<incident>/manifest.json`: the SHA-256 of every evidence object and the snapshot ids, locked."""
    manifest = {
        "incident": incident_id, "bucket": bucket,
        "objects": [o.model_dump(mode="json") for o in objects],
        "snapshots": snapshots,
    }
    return put_evidence(client(aws, "s3"), bucket, f"{incident_id}/manifest.json",
                        json.dumps(manifest, sort_keys=True, indent=1).encode(), retain_until(retention_days),
                        "the manifest: SHA-256 of every evidence object")


# --- ASSESS (read-only) -------------------------------------------------------------------


class ActivitySource(Protocol):
    """Where what a credential did is recorded. Not every environment has one."""

    name: str

    def events_for_key(self, access_key_id: str, start: datetime, end: datetime) -> list[ActivityEvent]:
        """Events made with the key in [start, end]. Raises ActivityUnavailable if it cannot tell."""
        ...


class CloudTrailActivity:
    """CloudTrail's event history (`LookupEvents`, the last 90 days of management events)."""

    name = "cloudtrail"

    def __init__(self, cloudtrail_client: Any) -> None:
        self._client = cloudtrail_client

    def events_for_key(self, access_key_id: str, start: datetime, end: datetime) -> list[ActivityEvent]:
        events: list[ActivityEvent] = []
        try:
            pages = self._client.get_paginator("lookup_events").paginate(
                LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": access_key_id}],
                StartTime=start, EndTime=end)
            for page in pages:
                events += [_activity(e) for e in page.get("Events", [])]
        except ClientError as exc:
            raise ActivityUnavailable(f"CloudTrail lookup refused ({_code(exc)})") from exc
        except BotoCoreError as exc:
            raise ActivityUnavailable(f"CloudTrail unreachable ({type(exc).__name__})") from exc
        return sorted(events, key=lambda e: e.at)


def _activity(event: dict[str, Any]) -> ActivityEvent:
    detail: dict[str, Any] = {}
    try:
        detail = json.loads(event.get("CloudTrailEvent") or "{}")
    except ValueError:
        pass
    at = event["EventTime"]
    if isinstance(at, datetime) and at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return ActivityEvent(
        at=at, event_name=event.get("EventName", ""), event_source=event.get("EventSource", ""),
        source_ip=str(detail.get("sourceIPAddress", "")), access_key_id=event.get("AccessKeyId", ""),
        resources=sorted(f"{r.get('ResourceType', '')}:{r.get('ResourceName', '')}" for r in event.get("Resources", [])),
    )


def key_activity_from(source: ActivitySource, keys: list[AccessKeyFact], start: datetime,
                      end: datetime) -> list[KeyActivity]:
    """What each key did according to `source`; where it cannot tell, say so (never guess)."""
    out = []
    for key in keys:
        try:
            out.append(KeyActivity(key=key, source=source.name, events=source.events_for_key(key.access_key_id, start, end)))
        except ActivityUnavailable as exc:
            _logger().warning("No activity record for %s: %s", key.access_key_id, exc)
            out.append(KeyActivity(key=key, source=source.name, available=False, unavailable_reason=str(exc)))
    return out


@step("ASSESS: what the compromised keys did")
def key_activity(aws: AwsAccess, keys: list[AccessKeyFact], since: datetime | None,
                 contained_at: datetime) -> list[KeyActivity]:
    """Last use (IAM) and CloudTrail events of each key, from `since` (or 90 days) to containment."""
    start = since or contained_at - timedelta(days=90)
    return key_activity_from(CloudTrailActivity(client(aws, "cloudtrail")), keys, start, contained_at)


# --- REMEDIATE ----------------------------------------------------------------------------


@step("REMEDIATE: rotate credentials", mutating=True)
def rotate_access_key(op: RotateAccessKey) -> dict[str, str]:
    """Create a new key for the owner, save it in a new AwsCredentials block, confirm it
    answers as the owner, and only then delete the old key. Returns the key ids (no secret)."""
    from prefect_aws import AwsCredentials

    iam = client(op.aws, "iam")
    keys = {k["AccessKeyId"]: k for k in iam.list_access_keys(UserName=op.user)["AccessKeyMetadata"]}
    saved = _saved_credentials(op.new_credentials_block)
    new_id = saved.aws_access_key_id if saved is not None else None
    if op.old_access_key_id not in keys and new_id in keys:
        return {"user": op.user, "old": op.old_access_key_id, "new": str(new_id), "block": op.new_credentials_block}
    if op.old_access_key_id not in keys:
        raise DriftError(f"Access key {op.old_access_key_id} of {op.user} is gone, and no new key was made by this "
                         "run: nothing was changed.")
    if keys[op.old_access_key_id]["Status"] != op.old_status:
        raise DriftError(f"Access key {op.old_access_key_id} is {keys[op.old_access_key_id]['Status']}, the plan "
                         f"assumed {op.old_status}: nothing was changed.")
    if new_id not in keys:
        _logger().info("Creating a new access key for %s (saved in block %s)", op.user, op.new_credentials_block)
        created = iam.create_access_key(UserName=op.user)["AccessKey"]
        base = AwsCredentials.load(op.aws.credentials_block)
        saved = AwsCredentials(aws_access_key_id=created["AccessKeyId"], aws_secret_access_key=created["SecretAccessKey"],
                               region_name=op.aws.region, aws_client_parameters=base.aws_client_parameters)  # type: ignore[attr-defined]
        saved.save(op.new_credentials_block, overwrite=False)
        new_id = created["AccessKeyId"]
    assert saved is not None
    arn = _confirm(saved, op)
    _logger().info("New key %s answers as %s; deleting the old key %s", new_id, arn, op.old_access_key_id)
    iam.delete_access_key(UserName=op.user, AccessKeyId=op.old_access_key_id)
    return {"user": op.user, "old": op.old_access_key_id, "new": str(new_id), "block": op.new_credentials_block,
            "confirmed_as": arn}


def _saved_credentials(name: str) -> Any:
    from prefect_aws import AwsCredentials

    try:
        return AwsCredentials.load(name)
    except ValueError:
        return None


_CONFIRM_SECONDS = 60.0  # a new IAM key takes a few seconds to be accepted everywhere


def _confirm(credentials: Any, op: RotateAccessKey) -> str:
    """The new key's identity, once STS accepts it; the old key is kept if it never does."""
    deadline = time.monotonic() + _CONFIRM_SECONDS
    while True:
        try:
            arn = _client_from(credentials, op.aws, "sts").get_caller_identity()["Arn"]
        except ClientError as exc:
            if time.monotonic() > deadline:
                raise DriftError(f"The new key for {op.user} was not accepted ({_code(exc)}); the old key "
                                 f"{op.old_access_key_id} was kept (inactive).") from exc
            time.sleep(2)
            continue
        if not arn.endswith(f"/{op.user}"):
            raise DriftError(f"The new key answers as {arn}, not {op.user}; the old key was kept (inactive).")
        return arn



@step("CONTAIN: containment done", timeline=False)
def containment_time(incident_id: str) -> datetime:
    """When containment ended: the end of the exposure window (persisted, so a replay agrees)."""
    return utcnow()


@step("REMEDIATE: review access logs")
def review_access_logs(incident_id: str, scope: ScopeAssessment) -> str:
    """Publish the access-log review (every recorded use of the compromised keys) as an
    artifact on the run. Changes nothing in AWS."""
    from prefect.artifacts import create_markdown_artifact

    text = access_log_review(scope)
    key = "".join(c if c.isalnum() else "-" for c in incident_id.lower()).strip("-")
    create_markdown_artifact(key=f"{key}-access-log-review", markdown=text,
                             description=f"Access-log review of incident {incident_id}")
    return text
