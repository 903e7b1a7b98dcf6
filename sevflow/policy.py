"""Approval policy: who may approve which change at which severity, how many distinct
approvers it needs, and how a waiting gate escalates. Pure: no I/O.

The open-source Prefect server has no users: an approver's identity is the name they type.
So the policy is enforced here, in the flow, and every answer is recorded whether it counts
or not.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from pydantic import BaseModel, Field, field_validator, model_validator

from sevflow.models import AnswerVerdict, GateAnswer, GateOutcome, Severity


class ApprovalRule(BaseModel):
    """Who may approve changes of a kind, at which severities, and how many must."""

    change_kind: str = Field(default="*", description="Change kind this rule covers; `*` for all.")
    severities: list[str] = Field(
        default_factory=list, description="Severities it covers (SEV-1..SEV-4); empty for all."
    )
    approvers: list[str] = Field(description="Names that may answer, as approvers type them.")
    required_approvals: int = Field(default=1, ge=1, description="Distinct approvals needed.")

    @field_validator("severities")
    @classmethod
    def _known_severities(cls, value: list[str]) -> list[str]:
        return [Severity.parse(v).value for v in value]

    @field_validator("approvers")
    @classmethod
    def _normalise(cls, value: list[str]) -> list[str]:
        return [normalise_name(v) for v in value if v.strip()]

    @model_validator(mode="after")
    def _enough_approvers(self) -> ApprovalRule:
        # A gate needing more distinct approvers than may answer could never close.
        distinct = len(set(self.approvers))
        if self.required_approvals > distinct:
            raise ValueError(
                f"rule for {self.change_kind!r} needs {self.required_approvals} distinct approvals but lists "
                f"{distinct} approver(s): add approvers or lower required_approvals"
            )
        return self

    def covers(self, kind: str, severity: Severity) -> bool:
        if not fnmatchcase(kind, self.change_kind):
            return False
        return not self.severities or severity.value in self.severities


class EscalationTier(BaseModel):
    """One step of the escalation path: who is told, and how long they have to answer."""

    name: str = Field(description="e.g. primary on-call, secondary on-call, incident commander")
    notify: list[str] = Field(default_factory=list, description="People told at this tier.")
    wait_seconds: float = Field(gt=0, description="How long this tier has before the next is told.")
    notification_block: str | None = Field(
        default=None,
        description="Prefect notification block that reaches them, as `block-type-slug/name` "
        "(e.g. `custom-webhook/oncall-primary`).",
    )


class PolicyError(ValueError):
    """The policy cannot decide for this change (no rule covers it)."""


def normalise_name(name: str) -> str:
    return " ".join(name.strip().split()).lower()


class GateRequirement(BaseModel):
    """What a gate needs, resolved from the policy for one change at one severity."""

    kind: str
    severity: Severity
    approvers: list[str]
    required_approvals: int
    tiers: list[EscalationTier]


def requirement_for(
    rules: list[ApprovalRule],
    escalation: dict[str, list[EscalationTier]],
    kind: str,
    severity: Severity,
) -> GateRequirement:
    """The first rule covering (kind, severity) decides; a change no rule covers cannot be
    approved by anyone, which is a configuration error to fix before production burns."""
    for rule in rules:
        if rule.covers(kind, severity):
            tiers = escalation.get(severity.value) or escalation.get("*") or []
            return GateRequirement(
                kind=kind,
                severity=severity,
                approvers=rule.approvers,
                required_approvals=rule.required_approvals,
                tiers=tiers,
            )
    raise PolicyError(
        f"The approval policy has no rule for change kind {kind!r} at {severity.value}: "
        "nobody could approve it. Add a rule to the sevflow Approval Policy block."
    )


class GateTally(BaseModel):
    """The gate's running count, rebuilt by replaying its answers in order."""

    approvals: list[str] = Field(default_factory=list)
    outcome: GateOutcome | None = None


def expiry_due(tiers: list[EscalationTier], opened_at: datetime) -> datetime | None:
    """When a gate opened at `opened_at` may expire: after every tier's wait; never without tiers."""
    if not tiers:
        return None
    return opened_at + timedelta(seconds=sum(t.wait_seconds for t in tiers))


def judge(
    answer: GateAnswer,
    requirement: GateRequirement,
    tally: GateTally,
    *,
    plan_digest: str | None = None,
    opened_at: datetime | None = None,
) -> tuple[AnswerVerdict, str]:
    """Judge one answer against the policy, the plan it was given for and what the gate has
    counted so far.

    Returns the verdict and a sentence for the timeline; updates `tally` in place.
    """
    who = normalise_name(answer.approver)
    if plan_digest is not None and answer.plan_digest != plan_digest:
        # An approval approves one exact plan: an answer for another is never counted here.
        given = answer.plan_digest[:12] or "no plan"
        return AnswerVerdict.IGNORED, (
            f"{answer.approver!r} answered for {given}, but this gate asks about plan {plan_digest[:12]}: "
            "answer recorded and ignored."
        )
    if answer.decision == "expired":
        # Whoever wrote it, an expiry counts only once the escalation schedule has run out.
        due = expiry_due(requirement.tiers, opened_at) if opened_at else None
        if due is None or answer.received_at < due:
            return AnswerVerdict.IGNORED, (
                "An expiry written before the escalation schedule ran out"
                + (f" (due {due:%Y-%m-%d %H:%M:%S} UTC)" if due else " (this gate has no escalation tiers)")
                + ": recorded and ignored."
            )
        tally.outcome = GateOutcome.EXPIRED
        return AnswerVerdict.EXPIRED, (
            f"No decision after the last escalation tier: nothing changed. {answer.reason}".strip()
        )
    if not who:
        return AnswerVerdict.IGNORED, "Answer without an approver name: ignored."
    if who not in requirement.approvers:
        return AnswerVerdict.IGNORED, (
            f"{answer.approver!r} may not {answer.decision} a {requirement.kind} at "
            f"{requirement.severity.value}: answer recorded and ignored."
        )
    if answer.decision == "reject":
        tally.outcome = GateOutcome.REJECTED
        return AnswerVerdict.REJECTED, f"Rejected by {answer.approver}: {answer.reason or 'no reason given'}"
    if who in tally.approvals:
        return AnswerVerdict.IGNORED, f"{answer.approver} already approved: a second approval by the same person does not count."
    tally.approvals.append(who)
    if len(tally.approvals) >= requirement.required_approvals:
        tally.outcome = GateOutcome.APPROVED
        return AnswerVerdict.COUNTED, (
            f"Approved by {answer.approver} ({len(tally.approvals)} of {requirement.required_approvals})."
        )
    return AnswerVerdict.COUNTED, (
        f"Approved by {answer.approver} ({len(tally.approvals)} of {requirement.required_approvals}); "
        "waiting for another distinct approver."
    )


def escalation_step(
    tiers: list[EscalationTier], opened_at: datetime, now: datetime, notified: int
) -> int | None:
    """Which tier to notify next, if its time has come.

    Tier 0 is notified when the gate opens. Tier i+1 is notified once tier i's wait has
    passed since tier i was due. `notified` is how many tiers have been notified so far.
    Returns the index of the tier to notify now, `len(tiers)` when the last tier's wait has
    passed (the gate expires), or None when nothing is due.
    """
    if not tiers:
        return None
    due_at = opened_at
    for index, tier in enumerate(tiers):
        if index >= notified:
            return index if now >= due_at else None
        due_at = due_at + timedelta(seconds=tier.wait_seconds)
    return len(tiers) if now >= due_at else None
