"""The approval policy block."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from sevflow.models import Severity
from sevflow.policy import (
    ApprovalRule,
    EscalationTier,
    GateRequirement,
    check_approver_keys,
    check_minimum_severity,
    minimum_severity_for,
    requirement_for,
)

__all__ = ["ApprovalPolicy", "ApprovalRule", "EscalationTier"]


def _default_escalation() -> dict[str, list[EscalationTier]]:
    # The runbook's response targets: SEV-1 immediate, SEV-2 within 1 hour, SEV-3 within
    # 24 hours, SEV-4 normal queue. Each severity's tiers add up to its target.
    minute = 60.0
    return {
        Severity.SEV1.value: [
            EscalationTier(name="primary on-call", wait_seconds=5 * minute),
            EscalationTier(name="secondary on-call", wait_seconds=10 * minute),
            EscalationTier(name="incident commander", wait_seconds=15 * minute),
        ],
        Severity.SEV2.value: [
            EscalationTier(name="primary on-call", wait_seconds=20 * minute),
            EscalationTier(name="secondary on-call", wait_seconds=20 * minute),
            EscalationTier(name="incident commander", wait_seconds=20 * minute),
        ],
        Severity.SEV3.value: [
            EscalationTier(name="primary on-call", wait_seconds=12 * 60 * minute),
            EscalationTier(name="team lead", wait_seconds=12 * 60 * minute),
        ],
        Severity.SEV4.value: [
            EscalationTier(name="team queue", wait_seconds=7 * 24 * 60 * minute),
        ],
    }


class ApprovalPolicy(Block):
    """Who may approve which kind of production change at which severity, how many distinct
    approvers each needs, and the escalation path a waiting gate follows. Procedures read the
    block named `default` unless told otherwise. The rule that first covers a change decides.
    """

    _block_type_name = "sevflow Approval Policy"
    _block_type_slug = "sevflow-approval-policy"
    _description = "Who may approve which production change, how many must, and whom to escalate to."

    rules: list[ApprovalRule] = Field(
        default_factory=list,
        description="Checked in order; the first covering the change kind and severity decides.",
    )
    escalation: dict[str, list[EscalationTier]] = Field(
        default_factory=_default_escalation,
        description="Escalation tiers per severity (SEV-1..SEV-4, or `*` for any).",
    )
    approver_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Each approver's SSH public key (ed25519 or ECDSA, the line of id_ed25519.pub), by name. "
        "Signed answers are checked against it; once any key is listed, SEV-1 and SEV-2 changes need them.",
    )
    forbid_self_approval: bool = Field(
        default=True, description="Whoever requested a change may not count as its approver."
    )
    approval_page_url: str | None = Field(
        default=None,
        description="Where approvers reach the approval page (the intake's address as they see it, e.g. "
        "https://sevflow.example.org). Set, each approver an escalation tier's `notify` names gets a "
        "one-click link of their own in that tier's notification.",
    )
    approval_link_seconds: float = Field(
        default=3600.0, gt=0, description="How long an approval link stays valid after it is sent."
    )

    follow_up_seconds: float = Field(
        default=24 * 3600.0, gt=0,
        description="Post-Incident Follow-up: seconds after resolution that the follow-up run checks the "
        "post-mortem (the runbook's \"Follow-up (within 24 hours)\").",
    )
    incident_commander_block: str | None = Field(
        default=None,
        description="Notification block (`block-type-slug/name`) that reaches the incident commander; when "
        "empty, the escalation tier named \"incident commander\" for the incident's severity is used.",
    )

    def incident_commander(self, severity: Severity) -> str | None:
        """The notification block that reaches the incident commander at this severity, if any."""
        if self.incident_commander_block:
            return self.incident_commander_block
        for key in (severity.value, "*"):
            for tier in self.escalation.get(key, []):
                if tier.name.strip().lower() == "incident commander" and tier.notification_block:
                    return tier.notification_block
        return None

    minimum_severity: dict[str, str] = Field(
        default_factory=dict,
        description="Per service glob, the lowest severity a run on it works at, e.g. {\"payments-*\": \"SEV-2\"}. "
        "A run started lower is raised to it (the timeline says so); a higher one stays.",
    )

    @field_validator("minimum_severity")
    @classmethod
    def _floors(cls, value: dict[str, str]) -> dict[str, str]:
        return check_minimum_severity(value)

    def minimum_severity_for(self, service: str) -> Severity | None:
        """The floor this policy sets for `service` (the most severe matching glob), if any."""
        return minimum_severity_for(self.minimum_severity, service)

    @field_validator("approver_keys")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        return check_approver_keys(value)

    def requirement(self, kind: str, severity: Severity) -> GateRequirement:
        return requirement_for(self.rules, self.escalation, kind, severity, self.approver_keys,
                               self.forbid_self_approval)
