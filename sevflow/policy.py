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
    verified: bool | None = Field(
        default=None,
        description="Count only signed answers (`sevflow approve --key`), checked against the policy's "
        "approver keys. Empty: required at SEV-1 and SEV-2 once the policy lists any key.",
    )

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
    verified: bool = Field(default=False, description="only answers signed with the approver's key count")
    approver_keys: dict[str, str] = Field(default_factory=dict, description="approver name → SSH public key")
    forbid_self_approval: bool = True
    requester: str = "unknown"


SSH_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def check_approver_keys(keys: dict[str, str]) -> dict[str, str]:
    """Names normalised; each value an SSH ed25519 or ECDSA public key line."""
    out: dict[str, str] = {}
    for name, key in keys.items():
        parts = key.split()
        if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
            raise ValueError(f"key of {name!r} is not an SSH ed25519 or ECDSA public key "
                             "(paste the line of your id_ed25519.pub)")
        out[normalise_name(name)] = " ".join(parts[:2])
    return out


def requirement_for(
    rules: list[ApprovalRule],
    escalation: dict[str, list[EscalationTier]],
    kind: str,
    severity: Severity,
    keys: dict[str, str] | None = None,
    forbid_self_approval: bool = True,
) -> GateRequirement:
    """The first rule covering (kind, severity) decides; a change no rule covers cannot be
    approved by anyone, which is a configuration error to fix before production burns."""
    keys = check_approver_keys(keys or {})
    for rule in rules:
        if rule.covers(kind, severity):
            tiers = escalation.get(severity.value) or escalation.get("*") or []
            verified = rule.verified if rule.verified is not None else (
                bool(keys) and severity in (Severity.SEV1, Severity.SEV2))
            return GateRequirement(
                kind=kind,
                severity=severity,
                approvers=rule.approvers,
                required_approvals=rule.required_approvals,
                tiers=tiers,
                verified=verified,
                approver_keys={name: key for name, key in keys.items() if name in rule.approvers},
                forbid_self_approval=forbid_self_approval,
            )
    raise PolicyError(
        f"The approval policy has no rule for change kind {kind!r} at {severity.value}: "
        "nobody could approve it. Add a rule to the sevflow Approval Policy block."
    )


class GateTally(BaseModel):
    """The gate's running count, rebuilt by replaying its answers in order."""

    approvals: list[str] = Field(default_factory=list)
    signed_keys: list[str] = Field(default_factory=list, description="keys of the counted signed approvals")
    used_links: list[str] = Field(default_factory=list, description="approval links already answered through")
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
    verification: tuple[bool, str] = (False, "the answer is not signed"),
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
    signed, how = verification
    if requirement.verified and not signed:
        return AnswerVerdict.IGNORED, (
            f"{answer.approver!r}: this change needs a signed answer ({how}); answer recorded and ignored. "
            "Answer with `sevflow approve|reject RUN --as NAME --reason TEXT --key ~/.ssh/id_ed25519`."
        )
    if (answer.decision == "approve" and requirement.forbid_self_approval
            and who == normalise_name(requirement.requester)):
        return AnswerVerdict.IGNORED, (
            f"{answer.approver} requested this change and may not approve it (the policy forbids "
            "self-approval): answer recorded and ignored."
        )
    if answer.decision == "reject":
        tally.outcome = GateOutcome.REJECTED
        return AnswerVerdict.REJECTED, f"Rejected by {answer.approver}: {answer.reason or 'no reason given'}"
    if who in tally.approvals:
        return AnswerVerdict.IGNORED, f"{answer.approver} already approved: a second approval by the same person does not count."
    key = requirement.approver_keys.get(who, "") if signed else ""
    if key and key in tally.signed_keys:
        return AnswerVerdict.IGNORED, (
            f"{answer.approver} signed with a key that already approved under another name: one key counts once."
        )
    if key:
        tally.signed_keys.append(key)
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


def check_minimum_severity(floors: dict[str, str]) -> dict[str, str]:
    """Service globs, each with a severity (SEV-1..SEV-4) a run on it never goes below."""
    out: dict[str, str] = {}
    for glob, severity in floors.items():
        if not glob.strip():
            raise ValueError("minimum_severity: a service glob is empty (use `*` for every service)")
        try:
            out[glob.strip()] = Severity.parse(severity).value
        except ValueError as exc:
            raise ValueError(f"minimum_severity for {glob!r}: {exc}") from None
    return out


def minimum_severity_for(floors: dict[str, str], service: str) -> Severity | None:
    """The most severe floor among the globs that match `service`; None when none does."""
    matching = [Severity.parse(sev) for glob, sev in floors.items() if fnmatchcase(service, glob)]
    return min(matching, key=lambda s: s.number) if matching else None


def effective_severity(requested: Severity, floors: list[tuple[Severity, str]]) -> tuple[Severity, str | None]:
    """The severity a run works at: the one it was started with, raised to the most severe
    floor (the service's policy, the alert that opened it). A requester may raise severity,
    never lower it below a floor. Returns it and why it was raised (None if it was not)."""
    effective, why = requested, None
    for floor, reason in floors:
        if floor.number < effective.number:
            effective, why = floor, reason
    return effective, why
