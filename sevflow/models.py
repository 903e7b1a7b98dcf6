"""Domain models shared by flows, tasks and the command line. Pure: no I/O imports."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

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


class ServiceSpec(BaseModel):
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
    approval_policy: str | None = None
    secret_env: list[str] = Field(default_factory=list, description="names of the command secrets")
    health_check_token: bool = Field(default=False, description="whether a health-check token is set")
    reading: str = Field(default="", description="which reading of the run this is (a plan read afresh "
                         "after drift gathers its facts afresh too); not part of the fingerprint")

    @property
    def repository_path(self) -> Path:
        return Path(os.path.expanduser(self.repository))

    def _fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"reading"})

    def fingerprint(self) -> str:
        return canonical_digest(self._fields())

    def changes_since(self, earlier: ServiceSpec) -> list[str]:
        """What moved from `earlier` to this one, a sentence per field."""
        now, then = self._fields(), earlier._fields()
        return [f"{name}: {then.get(name)!r} → {now.get(name)!r}" for name in now if now.get(name) != then.get(name)]


ChangeKind = Literal[
    "application-rollback",
    "configuration-rollback",
    "return-to-previous-version",
    "stop-writes",
    "restore-to-scratch",
    "swap-database",
    "allow-writes",
    "migration-rollback",
]
"""Kinds of production change the gate knows; the policy names them. Later procedures
(failover, credential changes, restores...) add theirs here."""


class IntegrityCheck(BaseModel):
    """A query that returns the bad rows of one table (no rows: the check passes)."""

    name: str
    table: str = Field(description="the table the bad rows are in, schema-qualified if not public")
    sql: str = Field(description="SELECT returning the bad rows; read-only")


class DatabaseSpec(BaseModel):
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

    def _fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"reading"})

    def fingerprint(self) -> str:
        return canonical_digest(self._fields())

    def changes_since(self, earlier: DatabaseSpec) -> list[str]:
        now, then = self._fields(), earlier._fields()
        return [f"{name}: {then.get(name)!r} → {now.get(name)!r}" for name in now if now.get(name) != then.get(name)]


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

    check: Literal["git-head", "target-unchanged", "database-target-unchanged", "databases-present"]
    description: str
    repository: str = ""
    branch: str = ""
    sha: str = ""
    target: ServiceSpec | None = None
    database: DatabaseSpec | None = None
    present: list[str] = Field(default_factory=list, description="databases that must exist (databases-present)")


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

    @property
    def repository_path(self) -> Path:
        return Path(os.path.expanduser(self.repository))


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


class HealthSpec(BaseModel):
    """How the change is verified: these URLs, all 2xx in one round, within the budget."""

    service: str
    urls: list[str]
    budget_seconds: float
    token_block: str | None = Field(default=None, description="block holding the bearer token, if any")


Operation = GitRestore | ShellCommand | StopWrites | AllowWrites | RestoreToScratch | SwapDatabase | MigrationRollback


class Plan(BaseModel):
    """One exact change an approver is asked to allow: the resolved operations in order, the
    preconditions that must still hold, how the result is verified and how to undo it. Its
    digest (sha256 of its canonical JSON) is what an answer approves."""

    kind: str = Field(description="change kind, as the approval policy names it")
    title: str
    target: str = Field(description="where: service, repository, branch, file")
    operations: list[GitRestore | ShellCommand | StopWrites | AllowWrites | RestoreToScratch | SwapDatabase
                     | MigrationRollback] = Field(default_factory=list)
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
            if isinstance(op, GitRestore):
                if op.path:
                    lines += [f"git checkout {op.source_sha[:12]} -- {op.path}",
                              f"git commit -m {op.subject!r} -- {op.path}   # on {op.expected_head[:12]}"]
                else:
                    lines += [f"git commit-tree {op.source_sha[:12]}^{{tree}} -p {op.expected_head[:12]}   "
                              "# new commit with that tree; history is not rewritten",
                              "git merge --ff-only <that commit>"]
            elif isinstance(op, ShellCommand):
                env = f"   # with secret env {', '.join(op.secret_env)}" if op.secret_env else ""
                lines.append(f"(cd {op.cwd} && {op.command}){env}")
            else:
                lines += database_command_lines(op)
        if self.verify:
            lines += [f"curl {url}   # must answer 2xx within {self.verify.budget_seconds:g} s"
                      for url in self.verify.urls]
        return lines

    def operation(self, kind: str) -> Any:
        """The plan's operation of that kind (`git-restore`, `build`, `deploy`, `reload`,
        `stop-writes`, `restore-to-scratch`, `swap-database`, `allow-writes`, `migration-rollback`)."""
        for op in self.operations:
            if getattr(op, "kind", None) == kind or (op.op == kind and op.op != "command"):
                return op
        return None

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
