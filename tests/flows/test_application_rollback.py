"""application-rollback end to end: real Prefect server and worker, real git repository,
real local app whose health depends on the version deployed."""

from __future__ import annotations

import uuid

import pytest

from sevflow.gate import AnswerRefused, answer_gate
from tests.conftest import Service, start, wait_final, wait_paused
from tests.support.repos import git


def _artifacts(run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])))


def test_approved_rollback_puts_last_good_version_in_place(service: Service, worker) -> None:
    repo = service.repo
    before = repo.snapshot()
    run_id = start("application-rollback", service=service.name, severity="SEV-1", policy=service.policy,
                   reason="checkout errors after v3")
    run = wait_paused(run_id)

    # Waiting at the gate: nothing has changed, and the form states the exact change.
    assert repo.snapshot() == before
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.input import read_flow_run_input

    keyset = keyset_from_paused_state(run.state)
    description = read_flow_run_input(keyset["description"], flow_run_id=run.id)
    assert "Roll back" in description and repo.commits["v2"][:7] in description
    assert "How to undo" in description and "Release v3: new feature" in description
    schema = read_flow_run_input(keyset["schema"], flow_run_id=run.id)
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert "decision" in schema["required"] and "default" not in schema["properties"]["decision"]

    verdict = answer_gate(run_id, "approve", "alice", "v2 was fine")
    assert "Approved by alice" in verdict
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message

    # The tree of v2 is in place as a NEW commit on top of v3: history is not rewritten.
    head = repo.head()
    assert git(repo.path, "rev-parse", "HEAD^") == repo.commits["v3"]
    assert git(repo.path, "rev-parse", "HEAD^{tree}") == git(repo.path, "rev-parse", f"{repo.commits['v2']}^{{tree}}")
    assert repo.commits["v3"] in repo.log() and head != repo.commits["v2"]
    assert not (repo.path / "feature.txt").exists()
    assert repo.status().strip() == "!! build/"
    # Built, deployed once, and the app is healthy on v2.
    assert service.app.deployed() == "version 2 healthy"
    assert (repo.deploy_dir / "deploys.log").read_text().split() == [head]
    assert any(h.get("Authorization") == "Bearer hc-tok-2b8d4e6f0a" for h in service.app.requests)

    # Records: a timeline table and a post-mortem in the runbook's template.
    arts = {a.key: a for a in _artifacts(run_id) if a.key}
    timeline = next(a for k, a in arts.items() if k.endswith("-timeline"))
    postmortem = next(a for k, a in arts.items() if k.endswith("-postmortem") and not k.endswith("-incident-postmortem"))
    assert "Approved by alice" in str(timeline.data) and "git checkout" in str(timeline.data)
    for heading in ("## Incident Summary", "## Timeline", "## Root Cause", "## Resolution", "## Prevention",
                    "## Action Items", "**Severity:** SEV-1"):
        assert heading in postmortem.data
    assert "Not known to this run" in postmortem.data
    # Health as the run saw it just before the change (v3 failing) and after it (v2 healthy).
    assert f"- **Health before:** {service.app.health_url} → 503" in postmortem.data
    assert f"- **Health after:** {service.app.health_url} → 200" in postmortem.data

    # The run carries the incident's tags.
    assert {"sevflow", "sev:1", f"service:{service.name}"} <= set(final.tags)
    assert any(t.startswith("incident:") for t in final.tags)


def test_rejected_rollback_changes_nothing(service: Service, worker) -> None:
    before = service.repo.snapshot()
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    answer_gate(run_id, "reject", "bob", "v3 is fine, it is the database")
    final = wait_final(run_id)
    assert final.state.name == "Rejected"
    assert "nothing was changed" in final.state.message
    assert service.repo.snapshot() == before
    assert service.app.deployed() == "version 3 unhealthy"


def test_unauthorised_answer_is_recorded_and_ignored(service: Service, worker) -> None:
    before = service.repo.snapshot()
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id, gate_answer=1)
    with pytest.raises(AnswerRefused, match="may not approve"):
        answer_gate(run_id, "approve", "mallory", "trust me")
    wait_paused(run_id, gate_answer=2)  # the gate waits again
    assert service.repo.snapshot() == before
    answer_gate(run_id, "approve", "Alice", "ok")
    assert wait_final(run_id).state.type.value == "COMPLETED"
    assert service.app.deployed() == "version 2 healthy"


def test_two_approver_change_waits_for_a_second_distinct_approver(service: Service, worker) -> None:
    service.save_policy(approvers=["alice", "bob"], required=2)
    before = service.repo.snapshot()
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id, gate_answer=1)
    assert "1 of 2" in answer_gate(run_id, "approve", "alice", "yes")
    wait_paused(run_id, gate_answer=2)
    with pytest.raises(AnswerRefused, match="already approved"):
        answer_gate(run_id, "approve", "alice", "yes, again")
    wait_paused(run_id, gate_answer=3)
    assert service.repo.snapshot() == before
    assert "2 of 2" in answer_gate(run_id, "approve", "bob", "agreed")
    assert wait_final(run_id).state.type.value == "COMPLETED"
    assert service.app.deployed() == "version 2 healthy"


def test_named_version_and_failed_verification_offers_return(service: Service, worker) -> None:
    # Roll back to v1 but make v1 unhealthy: verification fails, the return is offered behind a gate.
    repo = service.repo
    git(repo.path, "tag", "-d", "good-v2")
    repo_v3 = repo.head()
    service.save_target(health_check_urls=[service.app.health_url + "?v"], health_check_budget_seconds=0.5,
                        build_command="mkdir -p build && sed s/healthy/unhealthy/ app.txt > build/app.txt")
    run_id = start("application-rollback", service=service.name, policy=service.policy,
                   version=repo.commits["v1"][:10])
    wait_paused(run_id, gate_answer=1)
    answer_gate(run_id, "approve", "alice", "go")
    run = wait_paused(run_id, gate_answer=1 if False else None)
    assert run.state.state_details.pause_key == "return-answer-1"
    answer_gate(run_id, "approve", "bob", "put it back")
    final = wait_final(run_id)
    assert final.state.name == "VerificationFailed"
    assert "returned to" in final.state.message
    # Two new commits (rollback, return); the tree is v3's again; history intact.
    assert git(repo.path, "rev-parse", "HEAD^{tree}") == git(repo.path, "rev-parse", f"{repo_v3}^{{tree}}")
    assert git(repo.path, "rev-list", "--count", f"{repo_v3}..HEAD") == "2"
