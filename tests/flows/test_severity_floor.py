"""The rules belong to the service: a run's severity is never below the floor the service's
policy sets (a requester may raise it). Real server and worker; the gate judges at the
effective severity."""

from __future__ import annotations

import uuid

import pytest

from sevflow.gate import AnswerRefused, answer_gate
from sevflow.models import RECORD_PREFIX
from sevflow.tasks.orchestrator import read_record
from tests.conftest import Service, read_run, start, wait_final, wait_paused
from tests.flows.test_plans import _request
from tests.support.wait import until

RAISED = f"{RECORD_PREFIX}001-severity-raised"


def run_log(run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    return [log.message for log in logs]


def test_a_run_below_the_service_floor_runs_at_the_floor_and_a_higher_one_stays(service: Service, worker) -> None:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule

    ApprovalPolicy(
        rules=[ApprovalRule(severities=["SEV-1", "SEV-2"], approvers=["carol", "dave"], required_approvals=2),
               ApprovalRule(approvers=["alice"])],
        escalation={},
        minimum_severity={service.name: "SEV-2", "other-*": "SEV-1"},
    ).save(service.policy, overwrite=True)
    low = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-4")
    high = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-1")

    wait_paused(low)
    raised = (f"severity raised from SEV-4 to SEV-2: approval policy {service.policy!r} sets SEV-2 as the "
              f"minimum for {service.name}")
    assert read_record(low, RAISED)["description"] == raised
    until(lambda: raised in run_log(low), 60, what="the run's log to say its severity was raised")  # logs ship in batches
    tags = read_run(low).tags
    assert "sev:2" in tags and "sev:4" not in tags
    request = _request(low, "rollback")
    assert request["incident"]["severity"] == "SEV-2"
    assert (request["approvers"], request["required_approvals"]) == (["carol", "dave"], 2)
    # The SEV-4 rule's approver does not count at SEV-2: the gate keeps waiting.
    with pytest.raises(AnswerRefused, match="alice"):
        answer_gate(low, "approve", "alice", "looks fine", wait_seconds=60)
    wait_paused(low)  # a refused answer may resume the run for a moment; it asks again (Paused), unchanged

    wait_paused(high)
    assert read_record(high, RAISED) is None
    assert "sev:1" in read_run(high).tags
    assert _request(high, "rollback")["incident"]["severity"] == "SEV-1"

    for run_id in (low, high):
        answer_gate(run_id, "reject", "carol", "test over", wait_seconds=60)
        assert wait_final(run_id).state.name == "Rejected"
