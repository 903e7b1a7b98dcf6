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
    "failover",
    "hotfix-deploy",
]
"""Kinds of production change the gate knows; the policy names them. Later procedures
(failover, credential changes, restores...) add theirs here."""


class OutageSpec(BaseModel):
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

    def _fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"reading"})

    def fingerprint(self) -> str:
        return canonical_digest(self._fields())

    def changes_since(self, earlier: OutageSpec) -> list[str]:
        now, then = self._fields(), earlier._fields()
        return [f"{name}: {then.get(name)!r} → {now.get(name)!r}" for name in now if now.get(name) != then.get(name)]


class Precondition(BaseModel):
    """Something that must still hold when the approved plan is carried out."""

    check: Literal["git-head", "target-unchanged", "profile-unchanged"]
    description: str
    repository: str = ""
    branch: str = ""
    sha: str = ""
    target: ServiceSpec | None = None
    profile: OutageSpec | None = None


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


Operation = GitRestore | ShellCommand | FailoverCommand


class Plan(BaseModel):
    """One exact change an approver is asked to allow: the resolved operations in order, the
    preconditions that must still hold, how the result is verified and how to undo it. Its
    digest (sha256 of its canonical JSON) is what an answer approves."""

    kind: str = Field(description="change kind, as the approval policy names it")
    title: str
    target: str = Field(description="where: service, repository, branch, file")
    operations: list[GitRestore | ShellCommand | FailoverCommand] = Field(default_factory=list)
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
            elif isinstance(op, FailoverCommand):
                lines.append(f"(cd {op.cwd} && {op.command})   # fail over from {op.dependency}")
            else:
                env = f"   # with secret env {', '.join(op.secret_env)}" if op.secret_env else ""
                lines.append(f"(cd {op.cwd} && {op.command}){env}")
        if self.verify:
            lines += [f"curl {url}   # must answer 2xx within {self.verify.budget_seconds:g} s"
                      for url in self.verify.urls]
        return lines

    def operation(self, kind: str) -> GitRestore | ShellCommand | FailoverCommand | None:
        """The plan's operation of that kind (`git-restore`, `build`, `deploy`, `reload`)."""
        for op in self.operations:
            if (isinstance(op, GitRestore) and kind == "git-restore") or getattr(op, "kind", None) == kind:
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
