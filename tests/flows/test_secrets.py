"""Secrets from blocks appear in no log, no artifact, no event, no parameter, no record."""

from __future__ import annotations

import json

from sevflow.gate import answer_gate
from tests.support.wait import until
from tests.conftest import SECRETS, WEBHOOK_TOKEN, Service, start, wait_final, wait_paused
from tests.support.services import WebhookReceiver


def _all(client, path: str, key: str | None = None, page: int = 200) -> list:
    items, offset = [], 0
    while True:
        response = client.request("POST", path, json={"limit": page, "offset": offset})
        batch = response.json()
        batch = batch[key] if key else batch
        items += batch
        if len(batch) < page:
            return items
        offset += page


def _all_events(client) -> list:
    events: list = []
    page = client.request("POST", "/events/filter", json={"limit": 50}).json()  # the API pages by 50
    while True:
        events += page["events"]
        if not page.get("next_page"):
            return events
        page = client.request("GET", page["next_page"].split("/api", 1)[1]).json()


def _failing_webhook(service: Service, port: int) -> str:
    """A notification block whose URL carries the secret (as chat webhooks do) and whose receiver
    answers 500: the failure must be reported without the URL."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    name = f"down-{service.name}"
    CustomWebhookNotificationBlock(
        name="sevflow-test-down", url=f"http://127.0.0.1:{port}/notify?token={{{{token}}}}",
        json_data={"subject": "{{subject}}", "body": "{{body}}"}, secrets={"token": WEBHOOK_TOKEN},
        allow_private_urls=True,
    ).save(name, overwrite=True)
    return f"custom-webhook/{name}"


def test_no_secret_leaks_anywhere(service: Service, worker, stack) -> None:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule, EscalationTier

    down = WebhookReceiver(status=500)
    working = service._webhook_block()
    failing = _failing_webhook(service, down.httpd.server_address[1])
    # Tier 0 is told through a webhook that fails (its URL holds the token), tier 1 through one
    # that works: both paths are searched for the secrets.
    ApprovalPolicy(
        rules=[ApprovalRule(change_kind="*", approvers=["alice", "bob"])],
        escalation={"*": [EscalationTier(name="tier 0", wait_seconds=0.2, notification_block=failing),
                          EscalationTier(name="tier 1", wait_seconds=600, notification_block=working)]},
    ).save(service.policy, overwrite=True)
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    from sevflow.flows.approval_escalation import approval_escalation

    def escalated() -> list:
        approval_escalation()
        return service.receiver.received

    until(escalated, interval=0.1, what="the escalation to the working tier")
    down.close()
    assert down.received  # the failing receiver was really called (with the token in its URL)
    assert WEBHOOK_TOKEN in down.received[0]["path"]
    answer_gate(run_id, "approve", "alice", "ok")
    assert wait_final(run_id).state.type.value == "COMPLETED"
    # The deploy command really did print the token (masked), and the webhook and health
    # check really received theirs: the secrets were used, not just absent.
    assert service.receiver.received and service.app.requests

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        # The run's last logs reach the API in the background.
        logs = until(lambda: (lambda found: found if "deployed with token=********" in json.dumps(found) else [])(
            _all(client, "/logs/filter")), interval=0.5, what="the deploy step's log line")
        artifacts = _all(client, "/artifacts/filter")
        runs = _all(client, "/flow_runs/filter")
        task_runs = _all(client, "/task_runs/filter")
        events = _all_events(client)
        inputs = [client.request("POST", f"/flow_runs/{r['id']}/input/filter",
                                 json={"prefix": "", "limit": 200}).json() for r in runs]
    # Persisted task and flow results (the replayed steps' outputs) live in the storage folder.
    results = [p.read_bytes().decode("latin-1") for p in (stack.home / "storage").rglob("*") if p.is_file()]
    assert results
    haystack = json.dumps([logs, artifacts, runs, task_runs, events, inputs, results])
    assert "deployed with token=********" in haystack
    assert "NOTIFICATION FAILED via custom-webhook/down-" in haystack  # the failure is told, without the URL
    for secret in SECRETS:
        assert secret not in haystack
    for log_file in (stack.home / "worker.log", stack.home / "server.log"):
        text = log_file.read_text(errors="replace")
        for secret in SECRETS:
            assert secret not in text
