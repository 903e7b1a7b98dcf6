"""configuration-rollback end to end."""

from __future__ import annotations

from sevflow.gate import answer_gate
from tests.conftest import Service, start, wait_final, wait_paused
from tests.support.repos import git


def test_approved_config_rollback_restores_the_file_as_a_new_commit(service: Service, worker) -> None:
    repo = service.repo
    (repo.deploy_dir / "app.env").write_text("POOL_SIZE=0\n")  # the bad config is live
    (repo.deploy_dir / "current").write_text("version 3 healthy\n")
    before = repo.snapshot()
    run_id = start("configuration-rollback", service=service.name, policy=service.policy)
    wait_paused(run_id)
    assert repo.snapshot() == before
    answer_gate(run_id, "approve", "bob", "pool size 0 broke it")
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message

    # Only config/app.env changed, in one new commit on top of v3, with v2's content.
    assert git(repo.path, "rev-parse", "HEAD^") == repo.commits["v3"]
    assert git(repo.path, "diff", "--name-only", "HEAD^", "HEAD") == "config/app.env"
    assert (repo.path / "config/app.env").read_text() == "POOL_SIZE=20\n"
    assert (repo.path / "feature.txt").exists() and "version 3" in (repo.path / "app.txt").read_text()
    assert (repo.deploy_dir / "app.env").read_text() == "POOL_SIZE=20\n"  # reloaded
    assert (repo.deploy_dir / "reloads.log").read_text().split() == ["reloaded"]
    postmortem = _postmortem(run_id)
    assert f"- **Health before:** {service.app.health_url} → " in postmortem  # asked once, before the restore
    assert f"- **Health after:** {service.app.health_url} → 200" in postmortem


def test_named_commit_and_rejection_change_nothing(service: Service, worker) -> None:
    before = service.repo.snapshot()
    run_id = start("configuration-rollback", service=service.name, policy=service.policy,
                   config_file="config/app.env", commit=service.repo.commits["v1"])
    wait_paused(run_id)
    answer_gate(run_id, "reject", "alice", "not the config")
    assert wait_final(run_id).state.name == "Rejected"
    assert service.repo.snapshot() == before


def _postmortem(run_id: str) -> str:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)])))
    return next(str(a.data) for a in found if a.key and a.key.endswith("-postmortem")
                and not a.key.endswith("-incident-postmortem"))
