"""An alert's severity is a floor: the run it starts carries it in its context (set at creation,
unchangeable through the API), and a run that joins the incident at a lower severity is raised
to it. Real intake, server and worker."""

from __future__ import annotations

import uuid

from sevflow.gate import answer_gate
from sevflow.models import RECORD_PREFIX, REQUESTER_KEY, SEVERITY_FLOOR_KEY
from sevflow.tasks.orchestrator import read_record
from tests.conftest import Service, api, read_run, start, wait_final, wait_paused
from tests.flows.test_plans import _request
from tests.intake.conftest import post
from tests.support.stack import Intake

RAISED = f"{RECORD_PREFIX}001-severity-raised"


def test_a_run_on_an_alerts_incident_cannot_go_below_the_alerts_severity(intake: Intake, service: Service,
                                                                          stack) -> None:
    alert = {"id": f"checkout-5xx-{uuid.uuid4().hex[:6]}", "summary": "checkout 5xx above 5%", "severity": "critical",
             "labels": {"service": service.name}}
    answer = post(intake, "generic", alert).json()["alerts"][0]
    assert answer["outcome"] == "started", answer
    from_alert = answer["flow_run_id"]
    run = wait_paused(from_alert)
    incident = next(t.partition(":")[2] for t in run.tags if t.startswith("incident:"))
    why = f"the generic alert that opened incident {incident} is SEV-2 (rule labelled)"
    assert run.context[SEVERITY_FLOOR_KEY] == {"severity": "SEV-2", "why": why}
    assert read_record(from_alert, REQUESTER_KEY)["severity"] == "SEV-2"
    # Nobody lowers it afterwards: Prefect's API has no way to change a run's context.
    with api(stack) as http:
        refused = http.patch(f"/flow_runs/{from_alert}", json={"context": {SEVERITY_FLOOR_KEY: {"severity": "SEV-4"}}})
    assert refused.status_code == 422, refused.text
    assert read_run(from_alert).context[SEVERITY_FLOOR_KEY]["severity"] == "SEV-2"

    # A follow-up run on the incident, started at SEV-4, works at the alert's SEV-2.
    follow_up = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-4",
                      incident_id=incident)
    wait_paused(follow_up)
    assert read_record(follow_up, RAISED)["description"] == f"severity raised from SEV-4 to SEV-2: {why}"
    tags = read_run(follow_up).tags
    assert "sev:2" in tags and "sev:4" not in tags
    assert _request(follow_up, "rollback")["incident"]["severity"] == "SEV-2"

    from sevflow.blocks import ApprovalPolicy

    default_approver = ApprovalPolicy.load("default").rules[0].approvers[0]  # the intake's rule names no policy
    for run_id, approver in ((from_alert, default_approver), (follow_up, "alice")):
        answer_gate(run_id, "reject", approver, "test over", wait_seconds=60)
        assert wait_final(run_id).state.name == "Rejected"
