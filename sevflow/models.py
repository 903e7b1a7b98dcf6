"""Domain models shared by flows, tasks and the command line. Pure: no I/O imports."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field


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


ChangeKind = Literal[
    "application-rollback",
    "configuration-rollback",
    "return-to-previous-version",
]
"""Kinds of production change the gate knows; the policy names them. Later procedures
(failover, credential changes, restores...) add theirs here."""


class ProposedChange(BaseModel):
    """What an approver is asked to allow: the change, where, how, and how to undo it."""

    kind: str
    title: str
    target: str = Field(description="where: service, repository, branch, file")
    commands: list[str] = Field(default_factory=list, description="the exact commands or API calls")
    undo: str = Field(description="how to undo the change")
    details: str = Field(default="", description="markdown: commits, diff summary")

    def describe(self) -> str:
        """Markdown for the Resume form and notifications."""
        lines = [
            f"### {self.title}",
            "",
            f"**Change kind:** `{self.kind}`  ",
            f"**Where:** {self.target}",
            "",
            "**Exactly what will run:**",
            "```",
            *self.commands,
            "```",
            f"**How to undo:** {self.undo}",
        ]
        if self.details:
            lines += ["", self.details]
        return "\n".join(lines)


Decision = Literal["approve", "reject", "expired"]


class GateAnswer(BaseModel):
    """One answer given at a gate, as received (before the policy judged it)."""

    decision: Decision
    approver: str
    reason: str = ""
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
        return f"sevflow.incident.{self.incident_id}"

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
    change: ProposedChange
    approvers: list[str]
    required_approvals: int
    tiers: list[dict[str, Any]] = Field(default_factory=list)
    opened_at: datetime
