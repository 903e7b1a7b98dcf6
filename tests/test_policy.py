"""The approval policy's decisions, pure."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sevflow.models import AnswerVerdict, GateAnswer, GateOutcome, Severity
from sevflow.policy import (
    ApprovalRule,
    EscalationTier,
    GateTally,
    PolicyError,
    escalation_step,
    judge,
    requirement_for,
)

RULES = [
    ApprovalRule(change_kind="data-*", approvers=["Dana DBA", "erin"], required_approvals=2),
    ApprovalRule(change_kind="*", severities=["SEV-1", "sev2"], approvers=["alice", "bob"]),
]


def answer(decision: str, who: str) -> GateAnswer:
    return GateAnswer(decision=decision, approver=who, reason="r")


def test_first_covering_rule_decides_and_names_are_normalised() -> None:
    req = requirement_for(RULES, {}, "data-restore", Severity.SEV1)
    assert req.approvers == ["dana dba", "erin"] and req.required_approvals == 2
    assert requirement_for(RULES, {}, "application-rollback", Severity.SEV2).approvers == ["alice", "bob"]
    with pytest.raises(PolicyError, match="no rule for change kind 'application-rollback' at SEV-3"):
        requirement_for(RULES, {}, "application-rollback", Severity.SEV3)


def test_two_distinct_approvers_and_ignored_answers() -> None:
    req = requirement_for(RULES, {}, "data-restore", Severity.SEV1)
    tally = GateTally()
    assert judge(answer("approve", "mallory"), req, tally)[0] is AnswerVerdict.IGNORED
    assert judge(answer("approve", "  Dana   DBA "), req, tally)[0] is AnswerVerdict.COUNTED
    assert tally.outcome is None
    verdict, sentence = judge(answer("approve", "dana dba"), req, tally)
    assert verdict is AnswerVerdict.IGNORED and "already approved" in sentence
    assert judge(answer("approve", "Erin"), req, tally)[0] is AnswerVerdict.COUNTED
    assert tally.outcome is GateOutcome.APPROVED and tally.approvals == ["dana dba", "erin"]


def test_one_allowed_rejection_closes_the_gate_an_unallowed_one_does_not() -> None:
    req = requirement_for(RULES, {}, "application-rollback", Severity.SEV1)
    tally = GateTally()
    assert judge(answer("reject", "mallory"), req, tally)[0] is AnswerVerdict.IGNORED
    assert tally.outcome is None
    assert judge(answer("reject", "bob"), req, tally)[0] is AnswerVerdict.REJECTED
    assert tally.outcome is GateOutcome.REJECTED


def test_expiry_counts_only_once_the_escalation_schedule_ran_out() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    tiers = {"*": [EscalationTier(name="primary", wait_seconds=60), EscalationTier(name="second", wait_seconds=60)]}
    req = requirement_for(RULES, tiers, "application-rollback", Severity.SEV1)
    early = GateAnswer(decision="expired", approver="sevflow escalation", reason="r",
                       received_at=t0 + timedelta(seconds=119))
    tally = GateTally()
    verdict, sentence = judge(early, req, tally, opened_at=t0)
    assert verdict is AnswerVerdict.IGNORED and "before the escalation schedule ran out" in sentence
    assert tally.outcome is None
    on_time = early.model_copy(update={"received_at": t0 + timedelta(seconds=120)})
    assert judge(on_time, req, tally, opened_at=t0)[0] is AnswerVerdict.EXPIRED
    assert tally.outcome is GateOutcome.EXPIRED
    # A gate without tiers never expires, whoever writes the answer.
    no_tiers = requirement_for(RULES, {}, "application-rollback", Severity.SEV1)
    assert judge(on_time, no_tiers, GateTally(), opened_at=t0)[0] is AnswerVerdict.IGNORED


def test_an_answer_counts_only_for_the_plan_it_was_given_for() -> None:
    req = requirement_for(RULES, {}, "application-rollback", Severity.SEV1)
    tally = GateTally()
    for_a = GateAnswer(decision="approve", approver="alice", reason="r", plan_digest="a" * 64)
    verdict, sentence = judge(for_a, req, tally, plan_digest="b" * 64)
    assert verdict is AnswerVerdict.IGNORED and "asks about plan bbbbbbbbbbbb" in sentence
    assert tally.approvals == [] and tally.outcome is None
    assert judge(for_a, req, tally, plan_digest="a" * 64)[0] is AnswerVerdict.COUNTED


def test_a_rule_cannot_need_more_approvers_than_it_lists() -> None:
    with pytest.raises(ValueError, match="needs 3 distinct approvals but lists 2"):
        ApprovalRule(approvers=["alice", "Alice", "bob"], required_approvals=3)


def test_escalation_schedule() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    tiers = [EscalationTier(name="primary", wait_seconds=60), EscalationTier(name="secondary", wait_seconds=120)]
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    assert escalation_step(tiers, t0, at(0), notified=0) == 0
    assert escalation_step(tiers, t0, at(59), notified=1) is None
    assert escalation_step(tiers, t0, at(60), notified=1) == 1
    assert escalation_step(tiers, t0, at(179), notified=2) is None
    assert escalation_step(tiers, t0, at(180), notified=2) == 2  # == len(tiers): expire
    assert escalation_step([], t0, at(10_000), notified=0) is None


def test_severity_parsing_and_targets() -> None:
    assert Severity.parse("sev1") is Severity.SEV1 and Severity.parse(3) is Severity.SEV3
    assert Severity.SEV2.response_target == timedelta(hours=1) and Severity.SEV4.response_target is None
    with pytest.raises(ValueError, match="SEV-1, SEV-2"):
        Severity.parse("SEV-9")
    with pytest.raises(ValueError):
        ApprovalRule(approvers=["a"], severities=["SEV-7"])


@pytest.mark.parametrize("module", ["sevflow.models", "sevflow.policy", "sevflow.plans", "sevflow.versions",
                                    "sevflow.markdown",
                                    "sevflow.records", "sevflow.intake.alerts",
                                    "sevflow.intake.rules", "sevflow.intake.auth"])
def test_pure_modules_import_no_io_library(module: str) -> None:
    import subprocess
    import sys

    code = (f"import sys, {module}; bad = [m for m in ('prefect', 'httpx', 'git', 'psycopg', 'boto3') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_incident_commander_is_the_policys_block_or_its_tier_of_that_name() -> None:
    from sevflow.blocks import ApprovalPolicy, EscalationTier

    tiers = {"SEV-1": [EscalationTier(name="primary on-call", wait_seconds=60, notification_block="slack/oncall"),
                       EscalationTier(name="Incident Commander", wait_seconds=60, notification_block="email/ic")]}
    policy = ApprovalPolicy(escalation=tiers)
    assert policy.incident_commander(Severity.SEV1) == "email/ic"
    assert policy.incident_commander(Severity.SEV2) is None  # nobody named: the follow-up says so
    assert ApprovalPolicy(escalation=tiers, incident_commander_block="email/ic2").incident_commander(Severity.SEV2) == "email/ic2"
    assert ApprovalPolicy().follow_up_seconds == 24 * 3600  # the runbook's "within 24 hours"


# --- severity floors: a requester may raise severity, never lower it below a floor ----------


def test_effective_severity_is_raised_to_the_most_severe_floor_and_says_why() -> None:
    from sevflow.policy import effective_severity

    floors = [(Severity.SEV3, "policy"), (Severity.SEV2, "the alert"), (Severity.SEV4, "other")]
    assert effective_severity(Severity.SEV4, floors) == (Severity.SEV2, "the alert")
    assert effective_severity(Severity.SEV2, floors) == (Severity.SEV2, None)  # at the floor: not raised
    assert effective_severity(Severity.SEV1, floors) == (Severity.SEV1, None)  # a requester may raise it
    assert effective_severity(Severity.SEV3, []) == (Severity.SEV3, None)


def test_minimum_severity_per_service_glob_takes_the_most_severe_match() -> None:
    from sevflow.policy import check_minimum_severity, minimum_severity_for

    floors = check_minimum_severity({"*": "sev4", "payments-*": "SEV-2", "payments-core": "1"})
    assert floors == {"*": "SEV-4", "payments-*": "SEV-2", "payments-core": "SEV-1"}
    assert minimum_severity_for(floors, "payments-core") is Severity.SEV1
    assert minimum_severity_for(floors, "payments-api") is Severity.SEV2
    assert minimum_severity_for(floors, "blog") is Severity.SEV4
    assert minimum_severity_for({"payments-*": "SEV-2"}, "blog") is None


@pytest.mark.parametrize("floors, says", [({"shop": "SEV-5"}, "minimum_severity for 'shop': unknown severity"),
                                          ({" ": "SEV-1"}, "a service glob is empty")])
def test_a_bad_minimum_severity_is_refused_with_what_to_fix(floors: dict[str, str], says: str) -> None:
    from pydantic import ValidationError

    from sevflow.blocks import ApprovalPolicy

    with pytest.raises(ValidationError, match=says):
        ApprovalPolicy(rules=[ApprovalRule(approvers=["alice"])], minimum_severity=floors)
