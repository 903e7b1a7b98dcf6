"""Secrets from blocks appear in no log, no artifact, no event, no parameter, no record."""

from __future__ import annotations

import json

from sevflow.gate import answer_gate
from tests.support.wait import until
from tests.conftest import SECRETS, Service, start, wait_final, wait_paused


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


def test_no_secret_leaks_anywhere(service: Service, worker, stack) -> None:
    service.save_policy(tiers=[600.0])  # tier 0 is notified through the webhook block
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
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
        events = client.request("POST", "/events/filter", json={"limit": 50}).json()
        inputs = [client.request("POST", f"/flow_runs/{r['id']}/input/filter",
                                 json={"prefix": "", "limit": 200}).json() for r in runs]
    haystack = json.dumps([logs, artifacts, runs, task_runs, events, inputs])
    assert "deployed with token=********" in haystack
    for secret in SECRETS:
        assert secret not in haystack
    for log_file in (stack.home / "worker.log", stack.home / "server.log"):
        text = log_file.read_text(errors="replace")
        for secret in SECRETS:
            assert secret not in text
