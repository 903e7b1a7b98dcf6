"""While a gate waits, an artifact on the run shows what it asks: the whole proposed change
(its full diff), who may answer, since when, and when it escalates."""

from __future__ import annotations

import uuid
from typing import Any

from sevflow.gate import answer_gate
from tests.conftest import Service, start, wait_final, wait_paused


def _artifacts(run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    return {a.key: a for a in found if a.key}


def test_a_waiting_gate_publishes_the_whole_change_who_may_answer_and_when_it_escalates(
    service: Service, worker: Any,
) -> None:
    service.save_policy(approvers=["alice", "bob"], tiers=[3600, 7200])  # nobody escalates during the test
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    run = wait_paused(run_id)

    waiting = _artifacts(run_id)["waiting-rollback"].data
    # The whole diff being undone, not only its stat.
    assert "Full diff being undone" in waiting
    assert "-version 2 healthy" in waiting and "+version 3 unhealthy" in waiting and "+new feature" in waiting
    assert "**Who may answer:** alice, bob (1 distinct approval needed)" in waiting
    assert "**Waiting since:**" in waiting and f"sevflow approve {run_id}" in waiting
    lines = waiting.splitlines()
    notified = next(line for line in lines if "notified tier 0" in line)
    escalates = next(line for line in lines if "escalates to tier 1" in line)
    expires = next(line for line in lines if "expires; nothing is changed" in line)
    # Each tier's time after the one before it: opened + 1 h, then + 2 h more.
    from datetime import datetime

    def when(line: str) -> datetime:
        return datetime.strptime(line[2:21], "%Y-%m-%d %H:%M:%S")

    assert (when(escalates) - when(notified)).total_seconds() == 3600
    assert (when(expires) - when(escalates)).total_seconds() == 7200
    assert run.state.type.value == "PAUSED"

    answer_gate(run_id, "reject", "bob", "not now")
    assert wait_final(run_id).state.name == "Rejected"
