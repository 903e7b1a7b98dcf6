"""Rollbacks of a service whose repository is an address, not a checkout on the worker's disk:
the worker fetches it into its own cache, plans from the fetched branch, and pushes the
rollback commit fast-forward only. Real bare repositories (file:// and smart HTTP behind a
password), the session's real worker, which never had a checkout of the service."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import SecretStr

from sevflow.errors import DriftError
from sevflow.gate import answer_gate
from sevflow.models import GitRestore
from sevflow.tasks.orchestrator import read_records
from sevflow.versions import remote_cache_path
from tests.conftest import DEPLOY_TOKEN, HEALTH_TOKEN, start, wait_final, wait_paused
from tests.support.git_http import GitHttpRemote
from tests.support.repos import BUILD, RemoteRepo, git, make_remote_repo, save_service_target
from tests.support.services import HealthApp
from tests.support.wait import until

REPO_PASSWORD = "repo-pw-5c1e9a7f3d"  # a secret: must appear in no log, artifact or cache file


class RemoteService:
    def __init__(self, root: Path) -> None:
        self.name = f"shop-{uuid.uuid4().hex[:8]}"
        self.policy = f"policy-{self.name}"
        self.remote: RemoteRepo = make_remote_repo(root)
        self.app = HealthApp(self.remote.work.deploy_dir)

    def save_target(self, repository: str, **overrides: Any) -> None:
        save_service_target(self.name, self.remote.work, self.app.health_url, deploy_token=DEPLOY_TOKEN,
                            health_token=HEALTH_TOKEN, build_command=BUILD, repository=repository, **overrides)
        from sevflow.blocks import ApprovalPolicy, ApprovalRule

        ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=["alice", "bob"])]).save(self.policy, overwrite=True)


@pytest.fixture
def remote_service(tmp_path: Path, stack: Any) -> Iterator[RemoteService]:
    s = RemoteService(tmp_path)
    yield s
    s.app.close()


def _run_texts(run_id: str) -> list[str]:
    """Every log line and artifact of the run, and its final state message, as the API gives them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    rid = uuid.UUID(run_id)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[rid])), limit=200)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[rid])))
        run = client.read_flow_run(rid)
    return ([log.message for log in logs] + [str(a.data) for a in artifacts] + [str(a.description) for a in artifacts]
            + [str(run.state.message if run.state else ""), str(run.parameters)])


def test_rollback_of_a_remote_repository_is_pushed_by_a_worker_without_a_checkout(
    remote_service: RemoteService, worker: Any,
) -> None:
    remote, work = remote_service.remote, remote_service.remote.work
    remote_service.save_target(remote.url)
    before = remote.refs()
    run_id = start("application-rollback", service=remote_service.name, policy=remote_service.policy,
                   reason="errors since v3")
    run = wait_paused(run_id)

    # The plan was made from the fetched remote: it names the remote's head and the push.
    from prefect.input import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    description = read_flow_run_input(keyset_from_paused_state(run.state)["description"], flow_run_id=run.id)
    assert work.commits["v3"][:12] in description and work.commits["v2"][:7] in description
    assert "git push origin" in description and "fast-forward only" in description
    assert remote.refs() == before  # waiting at the gate: the remote is untouched

    answer_gate(run_id, "approve", "alice", "v2 was fine")
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message

    # One new commit on the remote's main, on top of v3, with v2's tree; nothing else moved.
    new_head = remote.head()
    assert git(remote.bare, "rev-parse", f"{new_head}^") == work.commits["v3"]
    assert remote.tree(new_head) == remote.tree(work.commits["v2"])
    assert git(remote.bare, "rev-parse", "refs/tags/good-v2") == work.commits["v2"]
    # Built and deployed from the worker's cache, under its state folder; the app is healthy.
    cache = remote_cache_path(remote.url, home=worker.env["SEVFLOW_HOME"])
    assert git(cache, "rev-parse", "HEAD") == new_head
    assert (work.deploy_dir / "deploys.log").read_text().split() == [new_head]
    assert remote_service.app.deployed() == "version 2 healthy"
    # The developer's clone was never touched: the worker worked only on its cache.
    assert git(work.path, "rev-parse", "HEAD") == work.commits["v3"]


def test_configuration_rollback_of_a_remote_repository_pushes_one_file_change(
    remote_service: RemoteService, worker: Any,
) -> None:
    remote, work = remote_service.remote, remote_service.remote.work
    (work.deploy_dir / "app.env").write_text("POOL_SIZE=0\n")  # the bad config is live
    (work.deploy_dir / "current").write_text("version 3 healthy\n")
    remote_service.save_target(remote.url)
    run_id = start("configuration-rollback", service=remote_service.name, policy=remote_service.policy)
    wait_paused(run_id)
    answer_gate(run_id, "approve", "bob", "pool size 0 broke it")
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert git(remote.bare, "rev-parse", "main^") == work.commits["v3"]
    assert git(remote.bare, "diff", "--name-only", "main^", "main") == "config/app.env"
    assert git(remote.bare, "show", "main:config/app.env") == "POOL_SIZE=20"
    assert (work.deploy_dir / "app.env").read_text() == "POOL_SIZE=20\n"  # reloaded from the worker's cache


def test_remote_moved_after_approval_is_refused_and_the_remote_is_unchanged(
    remote_service: RemoteService, worker: Any,
) -> None:
    remote, work = remote_service.remote, remote_service.remote.work
    remote_service.save_target(remote.url)
    run_id = start("application-rollback", service=remote_service.name, policy=remote_service.policy)
    wait_paused(run_id)

    # A colleague pushes while the gate waits; then the (now stale) plan is approved.
    moved = remote.push_commit("v4", {"hotfix.txt": "hotfix\n"}, "Hotfix by a colleague")
    moved_refs = remote.refs()
    answer_gate(run_id, "approve", "alice", "go")

    # Nothing was pushed: the run says what moved and asks again about a new plan.
    run = wait_paused(run_id, gate_answer=None)
    while run.state.state_details.pause_key.startswith("rollback-answer"):
        run = wait_paused(run_id)
    assert run.state.state_details.pause_key.startswith("rollback-2-")
    assert remote.refs() == moved_refs and remote.head() == moved
    said = f"moved from {work.commits['v3'][:12]} to {moved[:12]}"
    # The drift is on the run's timeline at once; its log line arrives with the next log batch.
    until(lambda: any(said in (v.get("description") or "") for v in read_records(run_id).values())
          and said in " ".join(_run_texts(run_id)), 60, what="the run to say what moved")

    answer_gate(run_id, "reject", "bob", "leave it")
    final = wait_final(run_id)
    assert final.state.name == "Rejected"
    assert remote.refs() == moved_refs
    assert remote_service.app.deployed() == "version 3 unhealthy"
    assert not (work.deploy_dir / "deploys.log").exists()


def test_the_push_step_refuses_a_remote_that_moved_and_changes_nothing(
    remote_service: RemoteService, stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The mutating step itself, given an approved operation whose head the remote has left.
    from sevflow.tasks.git import restore_version

    monkeypatch.setenv("SEVFLOW_HOME", str(tmp_path / "state"))
    remote, work = remote_service.remote, remote_service.remote.work
    op = GitRestore(service=remote_service.name, repository=remote.url, branch="main",
                    expected_head=work.commits["v3"], source_sha=work.commits["v2"],
                    source_tree=remote.tree(work.commits["v2"]), run_key=f"test-{uuid.uuid4()}",
                    subject="Roll back to v2")
    remote.push_commit("v4", {"hotfix.txt": "hotfix\n"}, "Hotfix by a colleague")
    moved_refs = remote.refs()
    with pytest.raises(DriftError, match="moved from .* since the change was approved. Nothing was changed"):
        restore_version.fn(op)
    assert remote.refs() == moved_refs


def test_https_credential_is_used_and_never_shown(
    remote_service: RemoteService, worker: Any, tmp_path: Path,
) -> None:
    remote, work = remote_service.remote, remote_service.remote.work
    server = GitHttpRemote(remote.bare.parent, "deploy-bot", REPO_PASSWORD)
    try:
        url = f"{server.url}/shop.git"
        remote_service.save_target(url, repository_username="deploy-bot",
                                   repository_credential=SecretStr(REPO_PASSWORD))
        run_id = start("application-rollback", service=remote_service.name, policy=remote_service.policy)
        wait_paused(run_id)
        answer_gate(run_id, "approve", "alice", "ok")
        final = wait_final(run_id)
        assert final.state.type.value == "COMPLETED", final.state.message
        assert git(remote.bare, "rev-parse", "main^") == work.commits["v3"]
        assert server.authorized > 0  # the password really was needed and given
    finally:
        server.close()

    # The credential is nowhere a person or a file could show it.
    texts = _run_texts(run_id)
    assert texts and not [t for t in texts if REPO_PASSWORD in t]
    assert REPO_PASSWORD not in worker.log_path.read_text(errors="replace")
    cache = remote_cache_path(url, home=worker.env["SEVFLOW_HOME"])
    for name in ("config", "FETCH_HEAD", "ORIG_HEAD", "logs/HEAD"):
        f = cache / ".git" / name
        assert not f.exists() or REPO_PASSWORD not in f.read_text(errors="replace"), name
    assert url in git(cache, "remote", "get-url", "origin")


def test_an_address_with_a_password_in_it_is_refused() -> None:
    from sevflow.blocks import ServiceTarget

    with pytest.raises(ValueError, match="repository_credential"):
        ServiceTarget(service="shop", repository="https://bot:s3cret@git.example.invalid/shop.git")
    target = ServiceTarget(service="shop", repository="git@git.example.invalid:team/shop.git")
    assert target.repository_path.name.startswith("shop-") and "repos" in target.repository_path.parts


def test_build_and_deploy_run_at_the_commit_the_run_pushed_not_at_a_later_push(
    remote_service: RemoteService, stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The approved rollback commit was pushed; a colleague pushes on top before the build: the
    # build and deploy steps' checkout is the run's commit, and a branch rewritten so that the
    # run's commit is gone stops them.
    from sevflow.tasks.git import local_checkout

    monkeypatch.setenv("SEVFLOW_HOME", str(tmp_path / "state"))
    remote = remote_service.remote
    ours = remote.push_commit("rollback", {"rolled.txt": "back\n"}, "Roll back to v2 (the run's commit)")
    theirs = remote.push_commit("later", {"later.txt": "unapproved\n"}, "A colleague's push after the rollback")
    checkout = local_checkout(remote.url, "main", remote_service.name, None, at=ours)
    assert git(checkout, "rev-parse", "HEAD") == ours
    assert not (checkout / "later.txt").exists()
    assert local_checkout(remote.url, "main", remote_service.name, None) and \
        git(checkout, "rev-parse", "HEAD") == theirs  # without `at`: the branch as it is

    git(remote.bare, "update-ref", "refs/heads/main", remote.work.commits["v3"])  # history rewritten
    before = remote.refs()
    with pytest.raises(DriftError, match="no longer on .*Nothing was built or deployed"):
        local_checkout(remote.url, "main", remote_service.name, None, at=ours)
    assert remote.refs() == before
