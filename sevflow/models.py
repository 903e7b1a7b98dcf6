"""Domain models shared by flows, tasks and the command line. Pure: no I/O imports."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field
from sevflow.versions import is_remote_repository, remote_cache_path

# Every durable record and event resource name is spelled here once; the gate, the incident,
# the intake and the CLI all read them from here.
RECORD_PREFIX = "sevflow-record-"
"""Durable timeline records on a run: flow run inputs under `sevflow-record-<key>`."""


def gate_request_key(gate: str) -> str:
    """Where a gate's request (its plan, who may answer) is stored on the run."""
    return f"sevflow-gate-{gate}-request"


def gate_expired_key(gate: str) -> str:
    """Written once by the escalation watcher when it expires a gate."""
    return f"sevflow-gate-{gate}-expired"


def gate_answer_key(gate: str, n: int) -> str:
    """The suspend key of a gate's n-th wait; Prefect stores the answer under it."""
    return f"{gate}-answer-{n}"


REQUESTER_KEY = "sevflow-requester"
"""Who asked for the run's changes: written once by `sevflow run --as` (signed with a key)."""
SEVERITY_FLOOR_KEY = "sevflow-severity-floor"
"""Key in a flow run's context (set when the run is created; Prefect's API cannot change it
afterwards) of the severity the run may not go below: {"severity": "SEV-1", "why": "..."}.
The intake sets it to the severity its rule gave the alert."""


def incident_resource(incident_id: str) -> str:
    """The Prefect event resource of an incident."""
    return f"sevflow.incident.{incident_id}"


def canonical_digest(value: Any) -> str:
    """sha256 of the canonical JSON form of `value` (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Severity(str, Enum):
    """The runbook's severities (EMERGENCY-PROCEDURES.md, "Severity Definitions")."""

    SEV1 = "SEV-1"
    SEV2 = "SEV-2"
    SEV3 = "SEV-3"
    SEV4 = "SEV-4"

    @property
    def number(self) -> int:
        return int(self.value[-1])

    @property
    def title(self) -> str:
        return _SEVERITY_TITLES[self]

    @property
    def response_target(self) -> timedelta | None:
        """How soon the runbook wants a response; None for "normal queue"."""
        return _RESPONSE_TARGETS[self]

    @property
    def response_text(self) -> str:
        return _RESPONSE_TEXT[self]

    @property
    def priority(self) -> int:
        """Work-queue priority: lower runs first, as in Prefect's work queues."""
        return self.number

    @property
    def postmortem_required(self) -> bool:
        return self in (Severity.SEV1, Severity.SEV2)

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        if isinstance(value, Severity):
            return value
        text = str(value).strip().upper().replace("SEV", "").lstrip("-_ ")
        for sev in cls:
            if sev.value.endswith(text) and text in "1234" and text:
                return sev
        raise ValueError(f"unknown severity {value!r}: use one of SEV-1, SEV-2, SEV-3, SEV-4")


_SEVERITY_TITLES = {
    Severity.SEV1: "Critical (Production Down)",
    Severity.SEV2: "Major (Significant Impact)",
    Severity.SEV3: "Minor (Limited Impact)",
    Severity.SEV4: "Low (Minimal Impact)",
}
_RESPONSE_TARGETS = {
    Severity.SEV1: timedelta(0),
    Severity.SEV2: timedelta(hours=1),
    Severity.SEV3: timedelta(hours=24),
    Severity.SEV4: None,
}
_RESPONSE_TEXT = {
    Severity.SEV1: "Immediate, all hands",
    Severity.SEV2: "Within 1 hour",
    Severity.SEV3: "Within 24 hours",
    Severity.SEV4: "Normal queue",
}


class BlockReading(BaseModel):
    """A block as one run read it (no secret values): plans are made from it, and a block edited
    later is noticed by its fingerprint. `reading` (which reading of the run) is not part of it."""

    def _fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"reading"})

    def fingerprint(self) -> str:
        return canonical_digest(self._fields())

    def changes_since(self, earlier: BlockReading) -> list[str]:
        """What moved from `earlier` to this one, a sentence per field."""
        now, then = self._fields(), earlier._fields()
        return [f"{name}: {then.get(name)!r} → {now.get(name)!r}" for name in now if now.get(name) != then.get(name)]


class ServiceSpec(BlockReading):
    """A service target block as it was read once by a run: every field but the secret
    values (only their names). Plans are made from it, so the plan a person approves names
    exactly what the block said, and a block edited later is noticed (its fingerprint)."""

    block: str = Field(description="name of the sevflow Service Target block")
    service: str
    repository: str
    branch: str
    build_command: str | None = None
    deploy_command: str | None = None
    reload_command: str | None = None
    health_check_urls: list[str] = Field(default_factory=list)
    health_check_budget_seconds: float = 120.0
    config_files: list[str] = Field(default_factory=list)
    good_tag_pattern: str = "good-*"
    good_trailer: str = "Known-Good"
    command_timeout_seconds: float = 900.0
    build_disk_space_mb: int = 256
    approval_policy: str | None = None
    secret_env: list[str] = Field(default_factory=list, description="names of the command secrets")
    health_check_token: bool = Field(default=False, description="whether a health-check token is set")
    repository_username: str | None = None
    repository_credential: bool = Field(default=False, description="whether a repository credential is set")
    reading: str = Field(default="", description="which reading of the run this is (a plan read afresh "
                         "after drift gathers its facts afresh too); not part of the fingerprint")

    @property
    def service_name(self) -> str:
        return self.service

    @property
    def repository_path(self) -> Path:
        return _checkout_path(self.repository)

    @property
    def remote(self) -> bool:
        return is_remote_repository(self.repository)

    @property
    def credentials_block(self) -> str | None:
        """The block to read the repository credential from, if it has one."""
        return self.block if self.repository_credential else None


def _checkout_path(repository: str) -> Path:
    """The checkout the git steps and commands work in: the path itself, or, for a remote
    repository, this machine's cache of it under sevflow's state folder."""
    if is_remote_repository(repository):
        return remote_cache_path(repository)
    return Path(os.path.expanduser(repository))



class AwsAccess(BaseModel):
    """How a step reaches the account: the prefect-aws `AwsCredentials` block (by name) and the
    region. Never the keys themselves."""

    credentials_block: str
    region: str
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0


class WafIpSetRef(BaseModel):
    """A WAFv2 IP set sevflow adds suspicious addresses to."""

    name: str
    id: str
    scope: Literal["REGIONAL", "CLOUDFRONT"] = "REGIONAL"


class AwsAccountSpec(BlockReading):
    """A `sevflow AWS Account Target` block as read once by a run (it holds no secret: the keys
    live in the prefect-aws `AwsCredentials` block it names). Plans are made from it."""

    block: str = Field(description="name of the sevflow AWS Account Target block")
    account: str
    access: AwsAccess
    evidence_bucket: str
    evidence_retention_days: int = 365
    network_acl_id: str | None = None
    deny_rule_base: int = 10
    waf_ip_set: WafIpSetRef | None = None
    isolation_group_id: str | None = None
    patch_command: str | None = None
    patch_cwd: str = "."
    patch_timeout_seconds: float = 900.0
    log_groups: list[str] = Field(default_factory=list)
    notify: list[str] = Field(default_factory=list, description="notification blocks, `block-type-slug/name`")
    approval_policy: str | None = None
    reading: str = Field(default="", description="which reading of the run this is; not part of the fingerprint")



class AwsProbe(BaseModel):
    """One piece of AWS state an approved plan assumed, and the value it must still have.

    `value` is a sorted list of strings so it compares exactly: an access key's status
    (`["Active"]`), a network ACL's entries, a network interface's security groups, an IP
    set's addresses."""

    kind: Literal["access-key-status", "nacl-entries", "eni-groups", "ip-set-addresses"]
    subject: str = Field(description="the key id, ACL id, interface id or IP set id")
    context: dict[str, str] = Field(default_factory=dict, description="user name, IP set name and scope")
    value: list[str]


# --- what the AWS steps read (facts) ------------------------------------------------------


class AccessKeyFact(BaseModel):
    access_key_id: str
    user: str
    status: Literal["Active", "Inactive"]
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    last_used_service: str = ""
    last_used_region: str = ""
    user_key_count: int = 1


class NaclEntryFact(BaseModel):
    rule_number: int
    egress: bool
    action: str
    cidr: str
    protocol: str = "-1"

    def line(self) -> str:
        return f"{'egress' if self.egress else 'ingress'} {self.rule_number} {self.action} {self.protocol} {self.cidr}"


class NaclFact(BaseModel):
    network_acl_id: str
    entries: list[NaclEntryFact]

    def lines(self) -> list[str]:
        return sorted(e.line() for e in self.entries)


class IpSetFact(BaseModel):
    ref: WafIpSetRef
    version: Literal["IPV4", "IPV6"]
    addresses: list[str]


class EniGroups(BaseModel):
    """A network interface and the security groups it carries (before isolation: to undo)."""

    network_interface_id: str
    groups: list[str]


class InstanceFact(BaseModel):
    instance_id: str
    state: str
    interfaces: list[EniGroups]
    volumes: list[str]


class ActivityEvent(BaseModel):
    """One thing a credential did, as an audit source (CloudTrail) recorded it."""

    at: datetime
    event_name: str
    event_source: str = ""
    source_ip: str = ""
    access_key_id: str = ""
    resources: list[str] = Field(default_factory=list)


class KeyActivity(BaseModel):
    """What one compromised key did: IAM's last-used record and, when an audit source is
    available, its events in the window."""

    key: AccessKeyFact
    source: str = Field(description="where the events came from, e.g. cloudtrail")
    available: bool = True
    unavailable_reason: str = ""
    events: list[ActivityEvent] = Field(default_factory=list)


class ScopeAssessment(BaseModel):
    """ASSESS scope: what was accessed, what data may be exposed, how long."""

    window_start: datetime | None
    window_end: datetime
    activity: list[KeyActivity]  # not `keys`: Prefect reads a model with a `keys` attribute as a mapping
    resources_touched: list[str]
    event_counts: dict[str, int]
    source_ips: list[str]
    gaps: list[str] = Field(default_factory=list, description="what could not be assessed, and why")

    @property
    def window_text(self) -> str:
        start = self.window_start.isoformat() if self.window_start else "unknown (no record of first use)"
        return f"{start} → {self.window_end.isoformat()}"


class EvidenceObject(BaseModel):
    key: str
    sha256: str
    size: int
    version_id: str = ""
    what: str = ""
    retain_until: datetime = Field(description="locked (compliance mode) until then")


class EvidenceRecord(BaseModel):
    """PRESERVE evidence: what was kept, where, locked until when."""

    bucket: str
    retain_until: datetime
    snapshots: dict[str, str] = Field(default_factory=dict, description="volume id → snapshot id")
    objects: list[EvidenceObject] = Field(default_factory=list)
    manifest: EvidenceObject | None = None


# --- the AWS operations a breach plan is made of ------------------------------------------


class DisableAccessKey(BaseModel):
    """Set one IAM access key Inactive (it stays, so it can be re-enabled or examined)."""

    op: Literal["disable-access-key"] = "disable-access-key"
    aws: AwsAccess
    user: str
    access_key_id: str
    prior_status: Literal["Active", "Inactive"]

    def lines(self) -> list[str]:
        return [f"aws iam update-access-key --user-name {self.user} --access-key-id {self.access_key_id} "
                f"--status Inactive   # was {self.prior_status}"]

    def undo_line(self) -> str:
        return (f"aws iam update-access-key --user-name {self.user} --access-key-id {self.access_key_id} "
                f"--status {self.prior_status}")


class NaclDeny(BaseModel):
    rule_number: int
    cidr: str
    egress: bool


class DenyIps(BaseModel):
    """Add deny entries to a network ACL, in both directions, at rule numbers free when planned."""

    op: Literal["deny-ips"] = "deny-ips"
    aws: AwsAccess
    network_acl_id: str
    entries: list[NaclDeny]
    prior_entries: list[str] = Field(description="the ACL's entries before, one line each")

    def lines(self) -> list[str]:
        return [f"aws ec2 create-network-acl-entry --network-acl-id {self.network_acl_id} --rule-number "
                f"{e.rule_number} {'--egress' if e.egress else '--ingress'} --rule-action deny --protocol -1 "
                f"--{'ipv6-cidr-block' if ':' in e.cidr else 'cidr-block'} {e.cidr}" for e in self.entries]

    def undo_line(self) -> str:
        return "; ".join(f"aws ec2 delete-network-acl-entry --network-acl-id {self.network_acl_id} --rule-number "
                         f"{e.rule_number} {'--egress' if e.egress else '--ingress'}" for e in self.entries)


class WafBlockIps(BaseModel):
    """Add addresses to a WAFv2 IP set (the web ACL's block rule references it)."""

    op: Literal["waf-block-ips"] = "waf-block-ips"
    aws: AwsAccess
    ip_set: WafIpSetRef
    add: list[str]
    prior_addresses: list[str]

    def lines(self) -> list[str]:
        return [f"aws wafv2 update-ip-set --scope {self.ip_set.scope} --name {self.ip_set.name} --id "
                f"{self.ip_set.id} --addresses {' '.join(sorted({*self.prior_addresses, *self.add}))}"]

    def undo_line(self) -> str:
        return (f"aws wafv2 update-ip-set --scope {self.ip_set.scope} --name {self.ip_set.name} --id {self.ip_set.id} "
                f"--addresses {' '.join(self.prior_addresses) or '(none)'}")


class IsolateInstance(BaseModel):
    """Replace the security groups of each of an instance's network interfaces with the
    isolation group (which allows nothing)."""

    op: Literal["isolate-instance"] = "isolate-instance"
    aws: AwsAccess
    instance_id: str
    isolation_group_id: str
    interfaces: list[EniGroups] = Field(description="each interface with its groups before")

    def lines(self) -> list[str]:
        return [f"aws ec2 modify-network-interface-attribute --network-interface-id {i.network_interface_id} "
                f"--groups {self.isolation_group_id}   # {self.instance_id}, was {' '.join(i.groups)}"
                for i in self.interfaces]

    def undo_line(self) -> str:
        return "; ".join(f"aws ec2 modify-network-interface-attribute --network-interface-id "
                         f"{i.network_interface_id} --groups {' '.join(i.groups)}" for i in self.interfaces)


class RotateAccessKey(BaseModel):
    """Give the key's owner a new key (kept in a prefect-aws AwsCredentials block), confirm it
    works, and only then delete the old key."""

    op: Literal["rotate-access-key"] = "rotate-access-key"
    aws: AwsAccess
    user: str
    old_access_key_id: str
    old_status: Literal["Active", "Inactive"]
    new_credentials_block: str = Field(description="the AwsCredentials block the new key is saved in")

    def lines(self) -> list[str]:
        return [f"aws iam create-access-key --user-name {self.user}   # saved in AwsCredentials block "
                f"{self.new_credentials_block!r}, never shown",
                "aws sts get-caller-identity   # with the new key: must answer as " + self.user,
                f"aws iam delete-access-key --user-name {self.user} --access-key-id {self.old_access_key_id}   "
                "# only after the new key answered"]

    def undo_line(self) -> str:
        return (f"a deleted key cannot be restored: give {self.user} the new key from block "
                f"{self.new_credentials_block!r}, or create another")


class PatchCommand(BaseModel):
    """The account target's patch command, exactly as approved."""

    op: Literal["patch-command"] = "patch-command"
    command: str
    cwd: str
    timeout_seconds: float

    def lines(self) -> list[str]:
        return [f"(cd {self.cwd} && {self.command})"]

    def undo_line(self) -> str:
        return "the patch command's own undo (not known to sevflow)"


AwsOperation = DisableAccessKey | DenyIps | WafBlockIps | IsolateInstance | RotateAccessKey | PatchCommand


ChangeKind = Literal[
    "application-rollback",
    "configuration-rollback",
    "return-to-previous-version",
    "failover",
    "hotfix-deploy",
    "clear-caches",
    "delete-temp-files",
    "kill-process",
    "add-monitoring",
    "disable-credentials",
    "block-ips",
    "isolate-hosts",
    "rotate-credentials",
    "stop-writes",
    "restore-to-scratch",
    "swap-database",
    "allow-writes",
    "migration-rollback",
]
"""Kinds of production change the gate knows; the policy names them. Later procedures
(failover, credential changes, restores...) add theirs here."""


class OutageSpec(BlockReading):
    """An outage profile block as one run read it (no secret values, only whether they are
    set): where to look from, what to tell, how to fail over. Plans made from it name exactly
    what the block said; a block edited later is noticed by its fingerprint."""

    block: str = Field(description="name of the sevflow Outage Profile block")
    service: str
    probe_endpoints: list[str] = Field(default_factory=list)
    control_url: str
    status_page_webhook: str | None = None
    status_page_token: bool = False
    notification_blocks: list[str] = Field(default_factory=list)
    log_file: str | None = None
    log_command: str | None = None
    log_url: str | None = None
    log_lines: int = 200
    error_pattern: str = ""
    dependencies: dict[str, str] = Field(default_factory=dict)
    dependent_services: dict[str, str] = Field(default_factory=dict)
    users_metric_url: str | None = None
    deploy_window_seconds: float = 3600.0
    failover_command: str | None = None
    failover_cwd: str | None = None
    dependency_wait_seconds: float = 60.0
    verify_budget_seconds: float = 30.0
    watch_seconds: float = 300.0
    watch_interval_seconds: float = 10.0
    probe_timeout_seconds: float = 5.0
    reading: str = Field(default="", description="which reading of the run this is; not fingerprinted")



class CacheCommandSpec(BaseModel):
    """A command that clears a cache (e.g. `apt-get clean`), and the folder it empties: that
    folder's size is what the plan says it frees."""

    name: str
    command: str
    path: str = Field(description="the folder the command empties (measured for the plan)")
    timeout_seconds: float = 300.0


class HostSpec(BlockReading):
    """A host target block as a run read it: what a Memory/Disk Full plan is made from."""

    block: str = Field(description="name of the sevflow Host Target block")
    host: str
    filesystems: list[str] = Field(default_factory=list)
    scan_roots: list[str] = Field(default_factory=list)
    top_n: int = 10
    growth_window_seconds: float = 86400.0
    cache_folders: list[str] = Field(default_factory=list)
    cache_commands: list[CacheCommandSpec] = Field(default_factory=list)
    temp_allow_list: list[str] = Field(default_factory=list)
    temp_min_age_seconds: float = 86400.0
    disk_threshold_percent: float = 90.0
    memory_threshold_percent: float = 90.0
    kill_candidates: list[str] = Field(default_factory=list)
    kill_min_rss_bytes: int = 256 * 1024 * 1024
    kill_grace_seconds: float = 10.0
    leak_window_seconds: float = 3.0
    leak_samples: int = 6
    leak_min_growth_bytes: int = 1024 * 1024
    cleanup_interval_seconds: float = 3600.0
    prometheus_rules_dir: str | None = None
    reading: str = Field(default="", description="which reading of the run this is; not part of the fingerprint")



class IntegrityCheck(BaseModel):
    """A query that returns the bad rows of one table (no rows: the check passes)."""

    name: str
    table: str = Field(description="the table the bad rows are in, schema-qualified if not public")
    sql: str = Field(description="SELECT returning the bad rows; read-only")


class DatabaseSpec(BlockReading):
    """A database target block as a run read it: every field but the DSN's secret (the server is
    shown without its password). Plans are made from it; its fingerprint notices edits."""

    block: str = Field(description="name of the sevflow Database Target block")
    service: str
    server: str = Field(description="host:port/maintenance-database, no credentials")
    database: str = Field(description="the live database")
    app_roles: list[str] = Field(default_factory=list)
    integrity_checks: list[IntegrityCheck] = Field(default_factory=list)
    timestamp_columns: dict[str, str] = Field(default_factory=dict)
    s3_bucket_block: str | None = None
    backup_prefix: str = ""
    local_backup_dir: str | None = None
    restore_jobs: int = 2
    migration_tool: str | None = None
    migration_status_command: str | None = None
    migration_rollback_command: str | None = None
    migration_cwd: str | None = None
    command_timeout_seconds: float = 3600.0
    notification_block: str | None = None
    approval_policy: str | None = None
    reading: str = Field(default="", description="which reading of the run this is; not part of the fingerprint")



class BackupRef(BaseModel):
    """One backup archive (pg_dump custom format) and the checksum recorded when it was taken."""

    location: Literal["s3", "local"]
    key: str = Field(description="S3 key under the bucket, or the file's path")
    bucket_block: str | None = None
    sha256: str = Field(default="", description="as recorded beside it; empty if none was recorded")
    taken_at: datetime
    size: int = 0

    @property
    def label(self) -> str:
        where = f"s3 ({self.bucket_block}) {self.key}" if self.location == "s3" else self.key
        return f"{where}, taken {self.taken_at:%Y-%m-%d %H:%M:%S} UTC"


class StopWrites(BaseModel):
    """Make `database` read-only so it holds: read-only by default for every session, the
    application roles barred from logging in (a client that turns read-only off has no session
    to write with), and their open sessions in it ended."""

    op: Literal["stop-writes"] = "stop-writes"
    block: str
    database: str
    roles: list[str] = Field(description="application roles that can log in now and will not")
    run_key: str


class AllowWrites(BaseModel):
    """Undo StopWrites: read-only default reset on `database`, `roles` may log in again."""

    op: Literal["allow-writes"] = "allow-writes"
    block: str
    database: str
    roles: list[str]
    run_key: str


class RestoreToScratch(BaseModel):
    """Fetch `backup`, check its sha256 and table of contents, restore it into a new database
    `scratch` with `pg_restore -j jobs`. The live database is not touched."""

    op: Literal["restore-to-scratch"] = "restore-to-scratch"
    block: str
    backup: BackupRef
    scratch: str
    jobs: int
    run_key: str


class SwapDatabase(BaseModel):
    """In one transaction: `live` renamed to `keep_as` (kept, never dropped), `restored` renamed
    to `live`; their sessions ended first."""

    op: Literal["swap-database"] = "swap-database"
    block: str
    live: str
    restored: str
    keep_as: str
    run_key: str


class MigrationRollback(BaseModel):
    """The configured migration tool's rollback command for one migration, exactly as approved."""

    op: Literal["migration-rollback"] = "migration-rollback"
    block: str
    migration: str
    command: str
    cwd: str
    timeout_seconds: float
    status_before: str = Field(description="the tool's status output the plan was made from")



class WriteState(BaseModel):
    """Whether a database takes writes: its read-only default, which application roles can log
    in, how many client sessions it has."""

    database: str
    exists: bool = True
    read_only_default: bool = False
    roles_login: dict[str, bool] = Field(default_factory=dict)
    sessions: int = 0
    checked_at: datetime = Field(default_factory=utcnow)

    @property
    def writes_stopped(self) -> bool:
        return self.read_only_default and not any(self.roles_login.values())


class CheckResult(BaseModel):
    """One integrity check run once: how many bad rows, and the oldest write among them."""

    name: str
    table: str
    bad_rows: int
    first_bad_at: datetime | None = None


class TableSum(BaseModel):
    """A table's row count and order-independent checksum (sum of 60-bit row hashes, one
    streaming aggregate: works on tables of any size), and per-chunk sums by integer key."""

    table: str
    rows: int
    checksum: str
    key: str | None = None
    chunks: dict[str, list[str]] = Field(default_factory=dict, description="chunk start → [rows, checksum]")


class Assessment(BaseModel):
    """ASSESS scope: what the integrity checks found, when it started, what backups exist."""

    database: str
    checks: list[CheckResult]
    row_counts: dict[str, int]
    started_at: datetime | None = None
    backups: list[BackupRef] = Field(default_factory=list, description="newest first")
    assessed_at: datetime

    @property
    def bad_rows(self) -> int:
        return sum(c.bad_rows for c in self.checks)

    @property
    def affected(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checks:
            if c.bad_rows:
                out[c.table] = out.get(c.table, 0) + c.bad_rows
        return out


class GapRows(BaseModel):
    """Rows of one table written in the live database after the backup was taken: lost by a swap."""

    table: str
    column: str
    rows: int
    newest: datetime | None = None


class Verification(BaseModel):
    """VERIFY data: the restored copy's integrity checks, its tables against the live ones, the gap."""

    live: str
    restored: str
    backup_taken_at: datetime
    checks: list[CheckResult]
    live_tables: list[TableSum]
    restored_tables: list[TableSum]
    gap: list[GapRows]
    verified_at: datetime

    @property
    def clean(self) -> bool:
        return all(c.bad_rows == 0 for c in self.checks)

    @property
    def gap_rows(self) -> int:
        return sum(g.rows for g in self.gap)

    def differing_tables(self) -> list[str]:
        restored = {t.table: t for t in self.restored_tables}
        out = []
        for t in self.live_tables:
            r = restored.get(t.table)
            if r is None or (r.rows, r.checksum) != (t.rows, t.checksum):
                out.append(t.table)
        return out + sorted(set(restored) - {t.table for t in self.live_tables})

    def differing_chunks(self, table: str) -> list[str]:
        live = next((t for t in self.live_tables if t.table == table), None)
        restored = next((t for t in self.restored_tables if t.table == table), None)
        if not live or not restored or not live.key:
            return []
        return sorted((k for k in set(live.chunks) | set(restored.chunks) if live.chunks.get(k) != restored.chunks.get(k)),
                      key=int)


class RestoreResult(BaseModel):
    scratch: str
    backup: BackupRef
    sha256: str
    toc_entries: int
    seconds: float


class SwapResult(BaseModel):
    live: str
    kept_as: str
    swapped_at: datetime


class Precondition(BaseModel):
    """Something that must still hold when the approved plan is carried out."""

    check: Literal["git-head", "target-unchanged", "profile-unchanged", "host-target-unchanged",
                   "process-unchanged", "aws-target-unchanged", "aws-state",
                   "database-target-unchanged", "databases-present"]
    description: str
    repository: str = ""
    branch: str = ""
    sha: str = ""
    target: ServiceSpec | None = None
    profile: OutageSpec | None = None
    host_target: HostSpec | None = None
    pid: int | None = None
    start_time: int | None = Field(default=None, description="clock ticks after boot, /proc/<pid>/stat field 22")
    boot_id: str = ""
    account: AwsAccountSpec | None = Field(default=None, description="aws-target-unchanged: the block as planned")
    aws: AwsAccess | None = Field(default=None, description="aws-state: where to look")
    probe: AwsProbe | None = Field(default=None, description="aws-state: what to read, and what it must still be")
    database: DatabaseSpec | None = None
    present: list[str] = Field(default_factory=list, description="databases that must exist (databases-present)")
    credentials_block: str | None = Field(default=None, description="git-head of a remote repository: the "
                                          "service target block whose secret field reaches it")


class GitRestore(BaseModel):
    """Put the content of `source_sha` (its whole tree, or one file) on the branch as one new
    commit on top of `expected_head`."""

    op: Literal["git-restore"] = "git-restore"
    service: str
    repository: str
    branch: str
    expected_head: str
    source_sha: str
    source_tree: str = Field(description="the tree (or, for one file, the blob) being restored")
    path: str | None = Field(default=None, description="only this file; None for the whole tree")
    run_key: str = Field(description="marks the commit as this run's, so a re-run does not repeat it")
    subject: str
    credentials_block: str | None = Field(default=None, description="remote repository: the service target "
                                          "block whose secret field reaches it")

    @property
    def service_name(self) -> str:
        return self.service

    @property
    def repository_path(self) -> Path:
        return _checkout_path(self.repository)

    @property
    def remote(self) -> bool:
        return is_remote_repository(self.repository)


class ShellCommand(BaseModel):
    """One of the service's own commands (build, deploy, reload), exactly as approved."""

    op: Literal["command"] = "command"
    kind: Literal["build", "deploy", "reload"]
    service: str
    command: str = Field(description="the shell text; secrets reach it as environment variables only")
    cwd: str
    timeout_seconds: float
    secret_env: list[str] = Field(default_factory=list, description="names of the secret variables it gets")
    secrets_block: str = Field(description="the service target block whose secret fields hold their values")
    target_fingerprint: str = Field(description="the block as planned; an edited block stops the command")
    repository: str | None = Field(default=None, description="remote repository: the command runs in the "
                                   "running worker's checkout of it (`cwd` is the planning worker's)")
    branch: str | None = None
    credentials_block: str | None = None


class HealthSpec(BaseModel):
    """How the change is verified: these URLs, all 2xx in one round, within the budget."""

    service: str
    urls: list[str]
    budget_seconds: float
    token_block: str | None = Field(default=None, description="block holding the bearer token, if any")


class FailoverCommand(BaseModel):
    """The outage profile's failover command (switch to the standby of an external
    dependency), exactly as approved."""

    op: Literal["failover"] = "failover"
    kind: Literal["failover"] = "failover"
    service: str
    dependency: str = Field(description="the external dependency that is down")
    command: str
    cwd: str
    timeout_seconds: float
    profile_block: str = Field(description="the outage profile block it came from")
    profile_fingerprint: str = Field(description="the block as planned; an edited block stops the command")


class FileEntry(BaseModel):
    """One file exactly as it was seen when the plan was made; deleted only if it still is."""

    path: str = Field(description="relative to the operation's root, '/'-separated, no '..'")
    size: int = Field(description="st_size")
    freed_bytes: int = Field(description="st_blocks * 512: what deleting it frees (it has one link)")
    inode: int
    device: int
    mtime_ns: int


class DeleteFiles(BaseModel):
    """Delete exactly these regular files under `root` (a cache folder or an allow-listed temp
    folder): walked from `root` without following any symlink, each file checked (same inode,
    size, mtime, still old enough) just before it is unlinked; anything else is left alone."""

    op: Literal["delete-files"] = "delete-files"
    purpose: Literal["cache", "temp"]
    host: str
    root: str
    min_age_seconds: float = 0.0
    files: list[FileEntry]

    @property
    def freed_bytes(self) -> int:
        return sum(f.freed_bytes for f in self.files)


class CacheCommand(BaseModel):
    """Run a configured cache-clearing command (bash), exactly as approved."""

    op: Literal["cache-command"] = "cache-command"
    host: str
    name: str
    command: str
    path: str
    measured_bytes: int = Field(description="what `path` held when planned: what the command should free")
    timeout_seconds: float
    target_fingerprint: str = Field(description="the host block as planned; an edited block stops the command")
    block: str


class KillProcess(BaseModel):
    """Stop one process: SIGTERM, then SIGKILL after the grace period. Refused unless the PID
    is still the same process (same start time, same boot)."""

    op: Literal["kill-process"] = "kill-process"
    host: str
    pid: int
    start_time: int = Field(description="clock ticks after boot, /proc/<pid>/stat field 22")
    boot_id: str
    command: str
    rss_bytes: int
    grace_seconds: float


class CreateAutomation(BaseModel):
    """A Prefect automation: when `event` is seen for `resource_id`, run `deployment_id`."""

    op: Literal["create-automation"] = "create-automation"
    name: str
    event: str
    resource_id: str
    deployment: str
    deployment_id: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class WriteAlertRules(BaseModel):
    """Write a Prometheus alert-rule file (refused if a different file is already there)."""

    op: Literal["write-alert-rules"] = "write-alert-rules"
    path: str
    content: str


class ScheduleCleanup(BaseModel):
    """Add a schedule (by slug) to a deployment, with these parameters."""

    op: Literal["schedule-cleanup"] = "schedule-cleanup"
    deployment: str
    deployment_id: str
    slug: str
    interval_seconds: float
    parameters: dict[str, Any] = Field(default_factory=dict)


Operation = Annotated[
    Union[GitRestore, ShellCommand, FailoverCommand, DeleteFiles, CacheCommand, KillProcess, CreateAutomation, WriteAlertRules,
          ScheduleCleanup, DisableAccessKey, DenyIps, WafBlockIps, IsolateInstance, RotateAccessKey, PatchCommand,
          StopWrites, AllowWrites, RestoreToScratch, SwapDatabase, MigrationRollback],
    Field(discriminator="op"),
]


class Plan(BaseModel):
    """One exact change an approver is asked to allow: the resolved operations in order, the
    preconditions that must still hold, how the result is verified and how to undo it. Its
    digest (sha256 of its canonical JSON) is what an answer approves."""

    kind: str = Field(description="change kind, as the approval policy names it")
    title: str
    target: str = Field(description="where: service, repository, branch, file")
    operations: list[Operation] = Field(default_factory=list)
    preconditions: list[Precondition] = Field(default_factory=list)
    verify: HealthSpec | None = None
    undo: str
    details: str = Field(default="", description="markdown: commits, diff")
    secrets_used: list[str] = Field(default_factory=list, description="names, never values")

    @property
    def digest(self) -> str:
        return canonical_digest(self.model_dump(mode="json"))

    def command_lines(self) -> list[str]:
        """What will run, one line per operation, as a person would type it."""
        lines: list[str] = []
        for op in self.operations:
            if hasattr(op, "lines"):
                lines += op.lines()
            elif isinstance(op, GitRestore):
                if op.path:
                    lines += [f"git checkout {op.source_sha[:12]} -- {op.path}",
                              f"git commit -m {op.subject!r} -- {op.path}   # on {op.expected_head[:12]}"]
                else:
                    lines += [f"git commit-tree {op.source_sha[:12]}^{{tree}} -p {op.expected_head[:12]}   "
                              "# new commit with that tree; history is not rewritten",
                              "git merge --ff-only <that commit>"]
                if op.remote:
                    lines += [f"git fetch {op.repository} && git push origin <that commit>:refs/heads/{op.branch}   "
                              f"# fast-forward only: refused, nothing changed, if {op.branch} is no longer "
                              f"{op.expected_head[:12]}"]
            elif isinstance(op, FailoverCommand):
                lines.append(f"(cd {op.cwd} && {op.command})   # fail over from {op.dependency}")
            elif isinstance(op, ShellCommand):
                env = f"   # with secret env {', '.join(op.secret_env)}" if op.secret_env else ""
                lines.append(f"(cd {op.cwd} && {op.command}){env}")
            else:
                if isinstance(op, (StopWrites, AllowWrites, RestoreToScratch, SwapDatabase, MigrationRollback)):
                    lines += database_command_lines(op)
                else:
                    lines += _host_command_lines(op)
        if self.verify:
            lines += [f"curl {url}   # must answer 2xx within {self.verify.budget_seconds:g} s"
                      for url in self.verify.urls]
        return lines

    def operation(self, kind: str) -> Any:
        """The plan's first operation of that kind (`git-restore`, `build`, `deploy`, `reload`,
        or any other operation's `op`, e.g. `patch-command`)."""
        for op in self.operations:
            if (isinstance(op, GitRestore) and kind == "git-restore") or getattr(op, "kind", None) == kind \
                    or (hasattr(op, "lines") and op.op == kind):
                return op
            if not isinstance(op, (GitRestore, ShellCommand)) and op.op == kind:
                return op
        return None

    def operations_of(self, op: str) -> list[Any]:
        """Every operation of that `op` (`disable-access-key`, `isolate-instance`...), in order."""
        return [o for o in self.operations if o.op == op]

    def describe(self) -> str:
        """Markdown for the Resume form and notifications; free text escaped."""
        from sevflow import markdown as md

        lines = [
            f"### {md.escape(self.title)}",
            "",
            f"**Plan digest:** `{self.digest}`  ",
            f"**Change kind:** {md.code(self.kind)}  ",
            f"**Where:** {md.escape(self.target)}",
            "",
            "**Exactly what will run, in order:**",
            md.fence("\n".join(self.command_lines())),
        ]
        if self.preconditions:
            lines += ["", "**Checked again just before the change (if any moved, nothing is changed and you are asked again):**"]
            lines += [f"- {md.escape(p.description)}" for p in self.preconditions]
        if self.secrets_used:
            lines += ["", f"**Secrets used (names only):** {', '.join(md.code(s) for s in self.secrets_used)}"]
        lines += ["", f"**How to undo:** {md.escape(self.undo)}"]
        if self.details:
            lines += ["", self.details]
        return "\n".join(lines)


SHOWN_FILES = 40
"""How many files of a deletion the plan's text lists; the plan itself (its JSON and digest) holds all."""


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _host_command_lines(op: Any) -> list[str]:
    if isinstance(op, DeleteFiles):
        lines = [f"# on {op.host}: delete {len(op.files)} {op.purpose} file(s) under {op.root}, frees "
                 f"{human_bytes(op.freed_bytes)} ({op.freed_bytes} bytes); each only if still the same inode, "
                 "size and mtime; no symlink followed"]
        for f in op.files[:SHOWN_FILES]:
            lines.append(f"rm -- {os.path.join(op.root, f.path)}   # {f.freed_bytes} bytes, inode {f.inode}")
        if len(op.files) > SHOWN_FILES:
            lines.append(f"# ... and {len(op.files) - SHOWN_FILES} more files (all listed in the plan's JSON)")
        return lines
    if isinstance(op, CacheCommand):
        return [f"{op.command}   # on {op.host}: cache {op.name!r}, should free {human_bytes(op.measured_bytes)} "
                f"({op.measured_bytes} bytes) in {op.path}"]
    if isinstance(op, KillProcess):
        return [f"kill -TERM {op.pid}; after {op.grace_seconds:g} s kill -KILL {op.pid}   # on {op.host}: "
                f"{op.command[:120]!r}, RSS {human_bytes(op.rss_bytes)}, only if it still started at tick "
                f"{op.start_time} (boot {op.boot_id[:8]})"]
    if isinstance(op, CreateAutomation):
        return [f"prefect automation create {op.name!r}: on event {op.event} of {op.resource_id} "
                f"run {op.deployment} with {json.dumps(op.parameters, sort_keys=True)}"]
    if isinstance(op, WriteAlertRules):
        return [f"write {op.path} ({len(op.content.encode())} bytes, Prometheus alert rules; shown below)"]
    if isinstance(op, ScheduleCleanup):
        return [f"schedule {op.deployment} every {op.interval_seconds:g} s (slug {op.slug}) with "
                f"{json.dumps(op.parameters, sort_keys=True)}"]
    return [repr(op)]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def database_command_lines(op: StopWrites | AllowWrites | RestoreToScratch | SwapDatabase | MigrationRollback) -> list[str]:
    """A database operation as the SQL and commands a person would type."""
    if isinstance(op, StopWrites):
        return [*[f"ALTER ROLE {_ident(r)} NOLOGIN;   -- no session of it can turn read-only off" for r in op.roles],
                f"ALTER DATABASE {_ident(op.database)} SET default_transaction_read_only = on;",
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{op.database}' "
                "AND pid <> pg_backend_pid();   -- end its sessions: they began read-write"]
    if isinstance(op, AllowWrites):
        return [f"ALTER DATABASE {_ident(op.database)} RESET default_transaction_read_only;",
                *[f"ALTER ROLE {_ident(r)} LOGIN;" for r in op.roles]]
    if isinstance(op, RestoreToScratch):
        b = op.backup
        fetch = (f"aws s3 cp s3://<{b.bucket_block}>/{b.key} backup.dump" if b.location == "s3" else f"cp {b.key} backup.dump")
        return [fetch, f"sha256sum backup.dump   # must be {b.sha256 or '(none recorded: refused)'}",
                "pg_restore -l backup.dump   # the table of contents must read",
                f"CREATE DATABASE {_ident(op.scratch)};",
                f"pg_restore -j {op.jobs} -d {op.scratch} backup.dump   # the live database is not touched"]
    if isinstance(op, SwapDatabase):
        return [f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ('{op.live}', '{op.restored}');",
                f"BEGIN; ALTER DATABASE {_ident(op.live)} RENAME TO {_ident(op.keep_as)}; "
                f"ALTER DATABASE {_ident(op.restored)} RENAME TO {_ident(op.live)}; COMMIT;   "
                f"-- {op.keep_as} is kept, never dropped"]
    return [f"(cd {op.cwd} && {op.command})"]


Decision = Literal["approve", "reject", "expired"]


class GateAnswer(BaseModel):
    """One answer given at a gate, as received (before the policy judged it)."""

    decision: Decision
    approver: str
    reason: str = ""
    plan_digest: str = Field(default="", description="the plan the answer was given for")
    signature: str = Field(default="", description="SSH signature of the answer (sevflow.identity)")
    signed_at: str = Field(default="", description="when it was signed, ISO 8601 UTC")
    link_id: str = Field(default="", description="the approval link it was given through (sevflow.links)")
    link_proof: str = Field(default="", description="the link's proof: a hash of its token, never the token")
    received_at: datetime = Field(default_factory=utcnow)


class AnswerVerdict(str, Enum):
    COUNTED = "counted"  # an allowed approval, counted toward the required number
    REJECTED = "rejected"  # an allowed rejection: the gate closes, nothing changes
    IGNORED = "ignored"  # not allowed, or a repeat: recorded and ignored
    EXPIRED = "expired"  # the last escalation tier passed without a decision


class GateOutcome(str, Enum):
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class GateResult(BaseModel):
    """How a gate ended, with every answer it saw."""

    gate: str
    outcome: GateOutcome
    approvers: list[str] = Field(default_factory=list)
    answers: list[tuple[GateAnswer, AnswerVerdict, str]] = Field(default_factory=list)
    plan: Plan | None = Field(default=None, description="the plan as stored when the gate opened")

    @property
    def approved(self) -> bool:
        return self.outcome is GateOutcome.APPROVED


class TimelineEntry(BaseModel):
    """One line of an incident's timeline (after Netflix Dispatch's event model)."""

    at: datetime
    source: str = Field(description="who recorded it: sevflow, prefect, git, http, approver")
    kind: str = Field(description="step, state, approval, escalation, alert, note")
    description: str
    actor: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class IncidentContext(BaseModel):
    """The incident a flow run works on; every record and event is filed under it."""

    incident_id: str
    procedure: str
    service: str
    severity: Severity
    flow_run_id: str
    flow_run_name: str = ""
    run_url: str | None = None
    opened_at: datetime
    reason: str = ""
    policy: str = Field(default="default", description="the approval policy block the run is judged by")

    @property
    def resource_id(self) -> str:
        return incident_resource(self.incident_id)

    @property
    def tags(self) -> list[str]:
        return [
            "sevflow",
            f"incident:{self.incident_id}",
            f"sev:{self.severity.number}",
            f"service:{self.service}",
        ]


class GateRequest(BaseModel):
    """What a waiting gate asks, stored with the run so `sevflow pending` and the
    escalation watcher can read it without the flow's process."""

    gate: str
    incident: IncidentContext
    plan: Plan
    digest: str
    approvers: list[str]
    required_approvals: int
    tiers: list[dict[str, Any]] = Field(default_factory=list)
    opened_at: datetime
    verified: bool = Field(default=False, description="only signed answers count")
    approver_keys: dict[str, str] = Field(default_factory=dict, description="approvers' SSH public keys, by name")
    forbid_self_approval: bool = True
    requester: str = Field(default="unknown", description="who asked for the change")
    requester_verified: bool = Field(default=False, description="the requester signed the request")
    signature_max_age_seconds: float = 900.0
    approval_page_url: str | None = Field(default=None, description="base address of the approval page")
    approval_link_seconds: float = 3600.0




# --- Memory/Disk Full: what a host looks like (facts gathered read-only) --------------------


class FilesystemUsage(BaseModel):
    mount: str
    total_bytes: int
    used_bytes: int
    available_bytes: int
    used_percent: float
    inodes_used_percent: float = 0.0


class SizedPath(BaseModel):
    path: str
    bytes: int


class TreeScan(BaseModel):
    """The largest directories (cumulative, like `du -x`) and files under one root, and its
    recent growth (bytes in files modified within the window)."""

    root: str
    total_bytes: int
    files: int
    directories: int
    largest_directories: list[SizedPath] = Field(default_factory=list)
    largest_files: list[SizedPath] = Field(default_factory=list)
    recent_bytes: int = 0
    recent_files: list[SizedPath] = Field(default_factory=list)
    unreadable: int = Field(default=0, description="directories that could not be read")


class MemoryUsage(BaseModel):
    total_bytes: int
    available_bytes: int
    used_percent: float


class ProcessInfo(BaseModel):
    pid: int
    start_time: int = Field(description="clock ticks after boot, /proc/<pid>/stat field 22")
    boot_id: str
    command: str
    rss_bytes: int
    uid: int


class MemoryTrend(BaseModel):
    """One process's resident memory sampled over a short window: growing (leak?) or steady."""

    process: ProcessInfo
    samples: list[int] = Field(description="RSS bytes, oldest first")
    window_seconds: float
    verdict: Literal["leak", "legitimate", "exited"]

    @property
    def growth_bytes(self) -> int:
        return self.samples[-1] - self.samples[0] if self.samples else 0

    def sentence(self) -> str:
        p = self.process
        if self.verdict == "exited":
            return f"pid {p.pid} ({p.command[:80]!r}) exited while it was sampled."
        grew = f"{human_bytes(self.samples[0])} → {human_bytes(self.samples[-1])} in {self.window_seconds:g} s"
        if self.verdict == "leak":
            return (f"pid {p.pid} ({p.command[:80]!r}) keeps growing ({grew}, {len(self.samples)} samples, "
                    "never shrinking): likely a leak.")
        return f"pid {p.pid} ({p.command[:80]!r}) is steady ({grew}): legitimate use, not a leak."


class HostFacts(BaseModel):
    """Step 1 of the runbook, IDENTIFY: what is using the space and the memory."""

    host: str
    filesystems: list[FilesystemUsage] = Field(default_factory=list)
    scans: list[TreeScan] = Field(default_factory=list)
    memory: MemoryUsage
    top_processes: list[ProcessInfo] = Field(default_factory=list)
    trends: list[MemoryTrend] = Field(default_factory=list)
    killable: list[int] = Field(default_factory=list, description="pids the block lets be proposed for killing")
