"""The approval gate's guarantees, against a real Prefect server and worker."""

from __future__ import annotations

import json
import uuid

from sevflow.flows.approval_escalation import approval_escalation
from sevflow.gate import answer_gate
from tests.support.wait import until
from tests.conftest import Service, read_run, start, wait_final, wait_paused


def _events(resource_id: str, prefix: str = "sevflow.") -> list[dict]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client.request("POST", "/events/filter", json={
            "filter": {"resource": {"id": [resource_id]}, "event": {"prefix": [prefix]}, "order": "ASC"},
            "limit": 50,
        })
    return response.json()["events"]


def _wait_events(resource_id: str, names: set[str], timeout: float = 30) -> list[dict]:
    def found() -> list[dict]:
        events = _events(resource_id)
        return events if names <= {e["event"] for e in events} else []
    return until(found, timeout, 0.3, what=f"events {sorted(names)}")


def test_unanswered_gate_escalates_through_tiers_then_ends_waiting_on_a_human(service: Service, worker) -> None:
    service.save_policy(tiers=[0.3, 0.3])
    before = service.repo.snapshot()
    run_id = start("application-rollback", service=service.name, severity="SEV-1", policy=service.policy)
    wait_paused(run_id)

    # Tier 0 was told when the gate opened, with the run's link and the CLI command.
    first = service.receiver.received
    assert len(first) == 1
    body = first[0]["body"]["body"]
    assert f"sevflow approve {run_id}" in body and f"/runs/flow-run/{run_id}" in body
    assert "tier 0" in body and {k.lower(): v for k, v in first[0]["headers"].items()}["authorization"] == "Bearer wh-tok-9e1c3a5d7f"

    # Passes of the watcher before a tier's time do nothing; after it, the next tier is told.
    def escalated() -> bool:
        approval_escalation()
        return len(service.receiver.received) >= 2

    until(escalated, interval=0.1, what="the escalation to tier 1")
    assert "ESCALATED" in service.receiver.received[1]["body"]["subject"]
    assert "tier 1" in service.receiver.received[1]["body"]["body"]

    # After the last tier: the watcher answers `expired`; the run ends documented and unchanged.
    until(lambda: approval_escalation().get(run_id) == "expired", interval=0.1, what="the gate to expire")
    final = wait_final(run_id)
    assert final.state.name == "AwaitingHumanDecision"
    assert "Nothing was changed" in final.state.message
    assert service.repo.snapshot() == before
    assert len(service.receiver.received) == 2  # nobody told twice

    incident = next(t.split(":", 1)[1] for t in final.tags if t.startswith("incident:"))
    events = _wait_events(f"sevflow.incident.{incident}",
                          {"sevflow.approval.requested", "sevflow.approval.escalated", "sevflow.approval.expired"})
    assert {"sevflow.approval.requested", "sevflow.approval.escalated", "sevflow.approval.expired"} <= {
        e["event"] for e in events}
    assert all(any(r["prefect.resource.id"] == f"prefect.flow-run.{run_id}" for r in e["related"]) for e in events)


def test_a_worker_starts_an_escalation_run_only_when_a_tier_is_due(service: Service, worker) -> None:
    import asyncio
    from datetime import timedelta

    from sevflow.gate import due_escalations
    from sevflow.models import utcnow
    from sevflow.worker import start_due_escalations

    service.save_policy(tiers=[1.0, 3600.0])
    run_id = start("application-rollback", service=service.name, severity="SEV-1", policy=service.policy)
    wait_paused(run_id)
    assert len(service.receiver.received) == 1  # tier 0, told when the gate opened

    def ours(now=None) -> list[str]:
        return [k for k in due_escalations(now) if k.startswith(f"{run_id}:")]

    assert ours(utcnow() - timedelta(hours=1)) == []  # before tier 1's time: nothing due
    due = until(ours, 30, 0.2, what="tier 1 to fall due")
    assert due[0].endswith(":1")
    now = utcnow()
    watcher_run = asyncio.run(start_due_escalations(now))
    assert watcher_run is not None
    assert asyncio.run(start_due_escalations(now)) == watcher_run  # a second worker looking starts no second run
    assert wait_final(watcher_run).state.type.value == "COMPLETED"
    assert len(service.receiver.received) == 2 and "tier 1" in service.receiver.received[1]["body"]["body"]
    assert ours() == []  # told: the next step (expiry) is an hour away
    assert read_run(run_id).state.type.value == "PAUSED"  # and the gate still waits


def test_people_cannot_answer_expired_through_the_resume_form(service: Service, worker) -> None:
    from prefect.client.orchestration import get_client

    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/flow_runs/{id}/resume", path_params={"id": run_id},
                                  json={"run_input": {"decision": "expired", "approver": "alice", "reason": "x"}})
    assert response.status_code == 200 and response.json()["status"] == "REJECT"
    wait_paused(run_id, gate_answer=1)
    answer_gate(run_id, "reject", "alice", "cleanup")
    assert wait_final(run_id).state.name == "Rejected"


def test_an_answer_given_before_the_form_is_stored_waits_for_it(stack) -> None:
    """Prefect marks a run Paused, then stores the form's schema; a resume in between is refused
    ("Run input schema not found", met in CI under load). An answer given then must wait and land."""
    import threading

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.input import RunInput, keyset_from_paused_state
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Suspended

    from tests.support.proxy import CountingProxy

    class Form(RunInput):  # no gate request is stored for this run, so the digest sent is empty
        decision: str
        approver: str
        reason: str
        plan_digest: str

    @flow(name="sevflow-test-paused-elsewhere")
    def paused_elsewhere() -> None:
        pass

    state = Suspended(timeout_seconds=600, pause_key="between-answer-1")
    keyset = keyset_from_paused_state(state)
    state.state_details.run_input_keyset = keyset
    with get_client(sync_client=True) as client:  # a deployment no worker serves: resuming reschedules it
        deployment_id = client.create_deployment(flow_id=client.create_flow(paused_elsewhere), name="nobody-serves")
        run = client.create_flow_run_from_deployment(deployment_id, state=state)
    outcome: dict[str, object] = {}
    # The answer goes through a counting proxy: the test sees it ask for the form, and wait.
    proxy = CountingProxy(stack.api_url[: -len("/api")])
    asked = f"GET /api/flow_runs/{run.id}/input/{keyset['schema']}"

    def answer() -> None:
        try:
            with temporary_settings(updates={PREFECT_API_URL: proxy.api_url}):
                outcome["said"] = answer_gate(str(run.id), "approve", "alice", "early", wait_seconds=0.5)
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            outcome["error"] = exc

    answering = threading.Thread(target=answer)
    answering.start()
    try:
        until(lambda: proxy.counts[asked] >= 2 or "error" in outcome, what="the answer to ask for the form twice")
        assert "error" not in outcome, outcome.get("error")  # it did not resume yet, nor give up
        assert read_run(str(run.id)).state.type.value == "PAUSED"
        Form.save(keyset, flow_run_id=run.id)
        answering.join(timeout=60)
    finally:
        proxy.close()
    assert "error" not in outcome, outcome.get("error")
    after = read_run(str(run.id))
    assert after.state.type.value != "PAUSED"
    with get_client(sync_client=True) as client:
        given = json.loads(client.read_flow_run_input(run.id, keyset["response"]))
    assert given["approver"] == "alice" and given["decision"] == "approve" and given["reason"] == "early"


def test_kill_9_of_the_worker_while_a_gate_waits(service: Service, worker) -> None:
    """Answer while no worker runs; a new worker completes the run; each side effect once."""
    repo = service.repo
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    worker.kill_9()
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            response = client.request("POST", "/flow_runs/{id}/resume", path_params={"id": run_id},
                                      json={"run_input": {"decision": "approve", "approver": "alice", "reason": "go"}})
        assert response.json()["status"] == "ACCEPT"
    finally:
        worker.start()
        worker.wait_ready(worker.env["PREFECT_API_URL"])
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert (repo.deploy_dir / "deploys.log").read_text().split() == [repo.head()]
    assert (repo.deploy_dir / "builds.log").read_text().split() == ["build"]
    assert repo.log()[1] == repo.commits["v3"]  # exactly one rollback commit on top of v3

    from sevflow.tasks.orchestrator import read_records

    records = read_records(run_id)
    assert sum(1 for k in records if k.endswith("-opened")) == 1
    assert sum(1 for k in records if k.endswith("-request")) == 1


def test_ten_waiting_gates_do_not_delay_an_eleventh(service: Service, worker) -> None:
    """The worker runs at most 3 flow runs at once; ten runs wait at gates without a slot."""
    before = service.repo.snapshot()
    waiting = [start("application-rollback", service=service.name, policy=service.policy,
                     incident_id=f"wait-{i}-{uuid.uuid4().hex[:6]}") for i in range(10)]
    for run_id in waiting:
        wait_paused(run_id, timeout=180)
    eleventh = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(eleventh, timeout=60)
    answer_gate(eleventh, "approve", "alice", "the eleventh")
    assert wait_final(eleventh, timeout=60).state.type.value == "COMPLETED"
    assert service.app.deployed() == "version 2 healthy"
    for run_id in waiting:
        answer_gate(run_id, "reject", "bob", "superseded", wait_seconds=0)
    for run_id in waiting:
        assert wait_final(run_id, timeout=120).state.name == "Rejected"
    assert before["refs"] != service.repo.snapshot()["refs"]  # only the eleventh changed anything
    assert len((service.repo.deploy_dir / "deploys.log").read_text().split()) == 1
