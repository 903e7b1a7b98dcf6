"""Who asked: a run started by an alert records the alert's source and the routing rule as its
requester; a run started in the UI (no `--as`) says "unknown". Real intake, server and worker."""

from __future__ import annotations

import uuid

from sevflow.gate import answer_gate
from sevflow.models import REQUESTER_KEY
from sevflow.tasks.orchestrator import read_record
from tests.conftest import Service, start, wait_final, wait_paused
from tests.flows.test_plans import _request
from tests.intake.conftest import post
from tests.support.stack import Intake


def _description(run) -> str:
    from prefect.client.orchestration import get_client
    from prefect.input.run_input import keyset_from_paused_state

    key = keyset_from_paused_state(run.state)["description"]
    with get_client(sync_client=True) as client:
        return client.read_flow_run_input(flow_run_id=run.id, key=key)


def test_alert_started_runs_name_the_source_and_rule_ui_started_runs_unknown(intake: Intake,
                                                                             service: Service) -> None:
    alert = {"id": f"checkout-5xx-{uuid.uuid4().hex[:6]}", "summary": "checkout 5xx above 5%", "severity": "critical",
             "labels": {"service": service.name}}
    answer = post(intake, "generic", alert).json()["alerts"][0]
    assert answer["outcome"] == "started", answer
    from_alert = answer["flow_run_id"]
    from_ui = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-2")

    run = wait_paused(from_alert)
    stored = read_record(from_alert, REQUESTER_KEY)
    assert (stored["how"], stored["source"], stored["rule"]) == ("intake", "generic", "labelled")
    request = _request(from_alert, "rollback")
    assert (request["requester"], request["requester_verified"]) == ("generic alert, rule labelled", False)
    assert "Requested by:** generic alert, rule labelled (not proven)" in _description(run)

    ui_run = wait_paused(from_ui)
    assert read_record(from_ui, REQUESTER_KEY) is None
    assert _request(from_ui, "rollback")["requester"] == "unknown"
    assert "Requested by:** unknown (not proven)" in _description(ui_run)

    from sevflow.blocks import ApprovalPolicy

    default_approver = ApprovalPolicy.load("default").rules[0].approvers[0]  # the intake's rule names no policy
    for run_id, approver in ((from_alert, default_approver), (from_ui, "alice")):
        answer_gate(run_id, "reject", approver, "test over", wait_seconds=60)
        assert wait_final(run_id).state.name == "Rejected"
