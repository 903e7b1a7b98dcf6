"""The git steps against real repositories made in tmp_path (no mocks).

Each test asserts on the repository afterwards: its branch, commits, tree and files.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sevflow.blocks.service import ServiceTarget
from sevflow.errors import DriftError, PreflightError
from sevflow.models import GitRestore
from sevflow.tasks.git import (
    config_diff,
    config_history,
    inspect_repository,
    recent_history,
    resolve_version,
    restore_config_file,
    restore_version,
    rollback_preview,
)
from sevflow.versions import pick_last_good, previous_config_version, render_preview_markdown

ENV = ".env.example"


def git(path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=path, check=True, capture_output=True, text=True, env=env
    )
    return result.stdout.strip()


def commit(path: Path, message: str, files: dict[str, str | None], *, date: str) -> str:
    """Write (or, for None, delete) files and commit them all; returns the new sha."""
    for name, content in files.items():
        file = path / name
        if content is None:
            file.unlink()
        else:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message, "--date", date)
    return git(path, "rev-parse", "HEAD")


def state(path: Path) -> tuple[str, ...]:
    """Everything a refused step must leave as it was: refs, HEAD, index and files."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.relative_to(path).parts)
    return (
        git(path, "for-each-ref", "--format=%(refname) %(objectname)"),
        (path / ".git" / "HEAD").read_text(),
        git(path, "status", "--porcelain=v1", "--untracked-files=all", "--ignored"),
        git(path, "ls-files", "--stage"),
        "\n".join(f"{p.relative_to(path)}={p.read_text()}" for p in files),
    )


def tree(path: Path, rev: str) -> str:
    return git(path, "rev-parse", f"{rev}^{{tree}}")


def is_ancestor(path: Path, older: str, newer: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", older, newer], cwd=path).returncode == 0


@dataclass
class Shop:
    path: Path
    target: ServiceTarget
    c1: str  # tagged good-2024-03-01 (annotated)
    c2: str  # trailer Known-Good: yes
    c3: str  # config change
    c4: str  # head: breaks payments, changes config again

    @property
    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def isolated_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine's own git configuration (hooks, signing, identity) must not leak in.
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    path = tmp_path / "shop"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test Operator")
    git(path, "config", "user.email", "ops@example.com")
    (path / ".gitignore").write_text("node_modules/\n")
    c1 = commit(
        path,
        "Initial shop",
        {"app.js": "v1\n", ENV: "PORT=3000\n", "README.md": "shop\n"},
        date="2024-03-01T12:00:00+02:00",
    )
    git(path, "tag", "-a", "good-2024-03-01", "-m", "verified in production")
    c2 = commit(
        path,
        "Add checkout\n\nKnown-Good: yes",
        {"app.js": "v2\n", "checkout.js": "checkout\n"},
        date="2024-03-02T12:00:00+00:00",
    )
    c3 = commit(path, "Tune timeouts", {ENV: "PORT=3000\nTIMEOUT=5\n"}, date="2024-03-03T12:00:00+00:00")
    c4 = commit(
        path,
        "Rewrite payments",
        {"app.js": "v4\n", "payments.js": "payments\n", ENV: "PORT=3000\nTIMEOUT=5\nRETRIES=0\n"},
        date="2024-03-04T12:00:00+00:00",
    )
    target = ServiceTarget(service="shop", repository=str(path), branch="main", config_files=[ENV])
    return Shop(path, target, c1, c2, c3, c4)


def _restore(target: ServiceTarget, to: str, head: str, run_key: str, tree_sha: str = ""):
    """restore_version with the operation a plan would hold (tree check off unless given)."""
    sha = git(target.repository_path, "rev-parse", "--verify", f"{to}^{{commit}}") if to != "v9" else to
    subject = "Roll back" if to == "v9" else git(target.repository_path, "log", "-1", "--format=%h: %s", sha)
    op = GitRestore(service=target.service, repository=target.repository, branch=target.branch, expected_head=head,
                    source_sha=to, source_tree=tree_sha, run_key=run_key,
                    subject=f"Roll back {target.service} to {subject}")
    return restore_version.fn(op)


def _restore_file(target: ServiceTarget, path: str, source: str, head: str, run_key: str, blob: str = ""):
    short = git(target.repository_path, "rev-parse", "--short", source)
    op = GitRestore(service=target.service, repository=target.repository, branch=target.branch, expected_head=head,
                    source_sha=source, source_tree=blob, path=path, run_key=run_key,
                    subject=f"Restore {path} from {short}")
    return restore_config_file.fn(op)


# -- check the repository -------------------------------------------------------------------


def test_clean_checkout_passes(shop: Shop) -> None:
    (shop.path / "node_modules").mkdir()
    (shop.path / "node_modules" / "lib.js").write_text("ignored files are not local changes")
    status = inspect_repository.fn(shop.target)
    assert status.head_sha == shop.c4
    assert status.branch == "main"
    assert status.dirty is False and status.dirty_files == []


@pytest.mark.parametrize("change", ["modified", "staged", "untracked", "deleted"])
def test_dirty_checkout_is_refused_and_named(shop: Shop, change: str) -> None:
    if change == "modified":
        (shop.path / "app.js").write_text("hotpatched on the box\n")
        name = "app.js"
    elif change == "staged":
        (shop.path / "checkout.js").write_text("staged fix\n")
        git(shop.path, "add", "checkout.js")
        name = "checkout.js"
    elif change == "untracked":
        (shop.path / "debug.log").write_text("left behind\n")
        name = "debug.log"
    else:
        (shop.path / "README.md").unlink()
        name = "README.md"
    before = state(shop.path)

    with pytest.raises(PreflightError, match="local changes") as excinfo:
        inspect_repository.fn(shop.target)

    assert name in str(excinfo.value)
    assert "git stash" in str(excinfo.value)
    assert state(shop.path) == before


def test_missing_repository_is_refused(tmp_path: Path) -> None:
    target = ServiceTarget(service="shop", repository=str(tmp_path / "nowhere"), branch="main")
    with pytest.raises(PreflightError, match="does not exist"):
        inspect_repository.fn(target)
    assert not (tmp_path / "nowhere").exists()


def test_directory_that_is_not_a_repository_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    target = ServiceTarget(service="shop", repository=str(plain), branch="main")
    with pytest.raises(PreflightError, match="not a git repository"):
        inspect_repository.fn(target)
    assert list(plain.iterdir()) == []


def test_wrong_branch_is_refused(shop: Shop) -> None:
    git(shop.path, "switch", "-q", "-c", "experiment")
    before = state(shop.path)
    with pytest.raises(PreflightError, match="'experiment' checked out") as excinfo:
        inspect_repository.fn(shop.target)
    assert "git switch main" in str(excinfo.value)
    assert state(shop.path) == before


def test_detached_head_is_refused(shop: Shop) -> None:
    git(shop.path, "checkout", "-q", "--detach", shop.c2)
    before = state(shop.path)
    with pytest.raises(PreflightError, match="detached HEAD"):
        inspect_repository.fn(shop.target)
    assert state(shop.path) == before


def test_missing_branch_is_refused(shop: Shop) -> None:
    target = shop.target.model_copy(update={"branch": "production"})
    with pytest.raises(PreflightError, match="'production'"):
        recent_history.fn(target)


# -- identify the last good version ------------------------------------------------------------


def test_history_has_tags_trailers_and_utc_dates(shop: Shop) -> None:
    history = recent_history.fn(shop.target)
    assert [c.sha for c in history] == [shop.c4, shop.c3, shop.c2, shop.c1]
    assert history[3].tags == ["good-2024-03-01"]  # annotated tag, peeled to its commit
    assert history[2].trailers == {"Known-Good": "yes"}
    assert history[2].subject == "Add checkout"
    assert history[3].authored_at == datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc)
    assert history[0].short == git(shop.path, "rev-parse", "--short", shop.c4)
    assert [c.sha for c in recent_history.fn(shop.target, limit=2)] == [shop.c4, shop.c3]


def test_history_follows_the_first_parent(shop: Shop) -> None:
    git(shop.path, "switch", "-q", "-c", "feature")
    side = commit(shop.path, "Side work", {"side.js": "x\n"}, date="2024-03-05T12:00:00+00:00")
    git(shop.path, "switch", "-q", "main")
    git(shop.path, "merge", "-q", "--no-ff", "-m", "Merge feature", "feature")
    shas = [c.sha for c in recent_history.fn(shop.target)]
    assert side not in shas
    assert shas[1:] == [shop.c4, shop.c3, shop.c2, shop.c1]


def test_last_good_by_trailer_then_by_tag(shop: Shop) -> None:
    history = recent_history.fn(shop.target)
    by_trailer = pick_last_good(history, shop.c4, shop.target.good_tag_pattern, shop.target.good_trailer)
    assert by_trailer is not None and by_trailer.sha == shop.c2
    by_tag_only = pick_last_good(history, shop.c4, shop.target.good_tag_pattern, "No-Such-Trailer")
    assert by_tag_only is not None and by_tag_only.sha == shop.c1


def test_running_version_is_excluded_even_if_tagged_good(shop: Shop) -> None:
    git(shop.path, "tag", "good-2024-03-04")  # tagged good, yet it is what broke
    history = recent_history.fn(shop.target)
    assert history[0].tags == ["good-2024-03-04"]
    last_good = pick_last_good(history, shop.c4, "good-*", "Known-Good")
    assert last_good is not None and last_good.sha == shop.c2


def test_resolve_by_hash_prefix_and_tag(shop: Shop) -> None:
    assert resolve_version.fn(shop.target, shop.c2[:8]).sha == shop.c2
    assert resolve_version.fn(shop.target, "good-2024-03-01").sha == shop.c1


def test_unknown_version_is_refused(shop: Shop) -> None:
    before = state(shop.path)
    for ref in ["deadbeef", "good-does-not-exist", "--all", ""]:
        with pytest.raises(PreflightError, match="Unknown version") as excinfo:
            resolve_version.fn(shop.target, ref)
        assert repr(ref) in str(excinfo.value)
        assert "git log --oneline -10" in str(excinfo.value)
    assert state(shop.path) == before


def test_version_off_the_branch_is_allowed(shop: Shop) -> None:
    git(shop.path, "switch", "-q", "-c", "hotfix", shop.c2)
    hotfix = commit(shop.path, "Hotfix", {"app.js": "v2.1\n"}, date="2024-03-05T12:00:00+00:00")
    git(shop.path, "switch", "-q", "main")
    assert resolve_version.fn(shop.target, "hotfix").sha == hotfix


# -- show what will be rolled back ------------------------------------------------------------


def test_rollback_preview(shop: Shop) -> None:
    preview = rollback_preview.fn(shop.target, shop.c2)
    assert preview.from_sha == shop.c4 and preview.to_sha == shop.c2
    assert [c.sha for c in preview.commits] == [shop.c4, shop.c3]
    assert preview.files_changed == 3  # app.js, payments.js, .env.example
    assert (preview.insertions, preview.deletions) == (4, 1)
    assert "payments.js" in preview.diff_stat
    text = render_preview_markdown(preview)
    assert "Rewrite payments" in text and "Tune timeouts" in text


# -- git checkout <commit-hash> ---------------------------------------------------------------


def test_restore_version_adds_a_commit_with_the_exact_old_tree(shop: Shop) -> None:
    result = _restore(shop.target, shop.c2, shop.c4, "run-1")

    assert result.created is True
    assert result.previous_head == shop.c4 and result.restored_sha == shop.c2
    assert result.new_head == shop.head == git(shop.path, "rev-parse", "main")
    assert tree(shop.path, "HEAD") == tree(shop.path, shop.c2)
    # History is not rewritten: the new commit sits on top of the broken one.
    assert git(shop.path, "rev-parse", "HEAD^") == shop.c4
    assert git(shop.path, "rev-list", "--count", "HEAD") == "5"
    assert is_ancestor(shop.path, shop.c3, "HEAD") and is_ancestor(shop.path, shop.c4, "HEAD")
    # The working tree and index follow: files added since are gone, the rest is as it was.
    assert not (shop.path / "payments.js").exists()
    assert (shop.path / "app.js").read_text() == "v2\n"
    assert (shop.path / ENV).read_text() == "PORT=3000\n"
    assert git(shop.path, "status", "--porcelain", "--untracked-files=all") == ""
    message = git(shop.path, "log", "-1", "--format=%B")
    short = git(shop.path, "rev-parse", "--short", shop.c2)
    assert message.splitlines()[0] == f"Roll back shop to {short}: Add checkout"
    assert f"Sevflow-Run: run-1\nRolled-Back-From: {shop.c4}" in message
    assert git(shop.path, "reflog", "-1", "--format=%gs").startswith("sevflow run-1")
    assert inspect_repository.fn(shop.target).head_sha == result.new_head


def test_restore_version_rerun_changes_nothing(shop: Shop) -> None:
    first = _restore(shop.target, shop.c2, shop.c4, "run-1")
    before = state(shop.path)

    again = _restore(shop.target, shop.c2, shop.c4, "run-1")

    assert again.created is False
    assert (again.previous_head, again.new_head, again.restored_sha) == (shop.c4, first.new_head, shop.c2)
    assert state(shop.path) == before
    assert git(shop.path, "rev-list", "--count", "HEAD") == "5"


def test_restore_version_refuses_if_the_branch_moved_since_approval(shop: Shop) -> None:
    before = state(shop.path)
    with pytest.raises(PreflightError, match="since the change was approved"):
        _restore(shop.target, shop.c2, shop.c3, "run-1")
    assert state(shop.path) == before


def test_restore_version_refuses_a_dirty_checkout(shop: Shop) -> None:
    (shop.path / "app.js").write_text("hotpatched on the box\n")
    before = state(shop.path)
    with pytest.raises(PreflightError, match="app.js"):
        _restore(shop.target, shop.c2, shop.c4, "run-1")
    assert state(shop.path) == before


def test_restore_version_refuses_an_unknown_version(shop: Shop) -> None:
    before = state(shop.path)
    with pytest.raises(PreflightError, match="Unknown version 'v9'"):
        _restore(shop.target, "v9", shop.c4, "run-1")
    assert state(shop.path) == before


def test_return_to_the_version_that_was_running(shop: Shop) -> None:
    rolled_back = _restore(shop.target, shop.c2, shop.c4, "run-1")

    back = _restore(shop.target, rolled_back.previous_head, rolled_back.new_head, "run-2")

    assert back.created is True
    assert tree(shop.path, "HEAD") == tree(shop.path, shop.c4)
    assert git(shop.path, "rev-parse", "HEAD^") == rolled_back.new_head
    assert (shop.path / "payments.js").read_text() == "payments\n"
    assert git(shop.path, "status", "--porcelain") == ""


def test_restore_to_the_running_content_commits_nothing(shop: Shop) -> None:
    before = state(shop.path)
    result = _restore(shop.target, shop.c4, shop.c4, "run-1")
    assert result.created is False and result.new_head == result.previous_head == shop.c4
    assert state(shop.path) == before


# -- configuration rollback ---------------------------------------------------------------------


def test_config_history_and_previous_version(shop: Shop) -> None:
    history = config_history.fn(shop.target, ENV)
    assert [c.sha for c in history] == [shop.c4, shop.c3, shop.c1]
    previous = previous_config_version(history)
    assert previous is not None and previous.sha == shop.c3
    assert [c.sha for c in config_history.fn(shop.target, f"./{ENV}", limit=1)] == [shop.c4]


def test_config_file_not_listed_is_refused(shop: Shop) -> None:
    before = state(shop.path)
    with pytest.raises(PreflightError, match=r"allowed: \.env\.example"):
        config_history.fn(shop.target, "app.js")
    with pytest.raises(PreflightError, match="not a configuration file"):
        config_diff.fn(shop.target, "app.js", shop.c1)
    assert state(shop.path) == before


def test_config_file_without_history_is_refused(shop: Shop) -> None:
    target = shop.target.model_copy(update={"config_files": [ENV, "config/never.yml"]})
    with pytest.raises(PreflightError, match="no history"):
        config_history.fn(target, "config/never.yml")


def test_config_diff(shop: Shop) -> None:
    diff = config_diff.fn(shop.target, ENV, shop.c3)
    assert (diff.path, diff.from_sha, diff.head_sha, diff.identical) == (ENV, shop.c3, shop.c4, False)
    assert "+RETRIES=0" in diff.diff
    assert "app.js" not in diff.diff
    assert config_diff.fn(shop.target, ENV, shop.c4).identical is True


def test_config_diff_refuses_unknown_ref_and_missing_file(shop: Shop) -> None:
    target = shop.target.model_copy(update={"config_files": [ENV, "config/feature.yml"]})
    flags = {"config/feature.yml": "flags: on\n"}
    commit(shop.path, "Add feature flags", flags, date="2024-03-05T12:00:00+00:00")
    with pytest.raises(PreflightError, match="Unknown version 'nope'"):
        config_diff.fn(target, ENV, "nope")
    with pytest.raises(PreflightError, match="is not a file in commit"):
        config_diff.fn(target, "config/feature.yml", shop.c1)


def test_restore_config_file_commits_only_that_file(shop: Shop) -> None:
    result = _restore_file(shop.target, ENV, shop.c3, shop.c4, "run-7")

    assert result.created is True
    assert (result.previous_head, result.restored_sha) == (shop.c4, shop.c3)
    assert git(shop.path, "rev-parse", "HEAD^") == shop.c4
    assert git(shop.path, "diff-tree", "--no-commit-id", "--name-only", "-r", "HEAD") == ENV
    assert git(shop.path, "rev-parse", f"HEAD:{ENV}") == git(shop.path, "rev-parse", f"{shop.c3}:{ENV}")
    assert (shop.path / ENV).read_text() == "PORT=3000\nTIMEOUT=5\n"
    assert (shop.path / "app.js").read_text() == "v4\n"  # the code stays as it is
    assert (shop.path / "payments.js").exists()
    assert git(shop.path, "status", "--porcelain", "--untracked-files=all") == ""
    message = git(shop.path, "log", "-1", "--format=%B")
    assert message.splitlines()[0] == f"Restore {ENV} from {git(shop.path, 'rev-parse', '--short', shop.c3)}"
    assert f"Sevflow-Run: run-7\nRolled-Back-From: {shop.c4}" in message

    before = state(shop.path)
    again = _restore_file(shop.target, ENV, shop.c3, shop.c4, "run-7")
    assert again.created is False and again.new_head == result.new_head
    assert state(shop.path) == before


def test_restore_config_file_refuses_if_branch_moved_or_file_missing(shop: Shop) -> None:
    before = state(shop.path)
    with pytest.raises(PreflightError, match="since the change was approved"):
        _restore_file(shop.target, ENV, shop.c3, shop.c2, "run-7")
    target = shop.target.model_copy(update={"config_files": [ENV, "checkout.js"]})
    with pytest.raises(PreflightError, match="is not a file in commit"):
        _restore_file(target, "checkout.js", shop.c1, shop.c4, "run-7")
    assert state(shop.path) == before


def test_restore_refuses_content_other_than_the_approved_tree_or_blob(shop: Shop) -> None:
    before = state(shop.path)
    with pytest.raises(DriftError, match="not the approved"):
        _restore(shop.target, shop.c2, shop.c4, "run-1", tree_sha=tree(shop.path, shop.c1))
    with pytest.raises(DriftError, match="not the approved"):
        _restore_file(shop.target, ENV, shop.c3, shop.c4, "run-1", blob=git(shop.path, "rev-parse", f"{shop.c1}:{ENV}"))
    assert state(shop.path) == before
    assert _restore(shop.target, shop.c2, shop.c4, "run-1", tree_sha=tree(shop.path, shop.c2)).created


def test_head_drift_names_what_moved(shop: Shop) -> None:
    from sevflow.models import Precondition
    from sevflow.tasks.git import head_drift

    pre = Precondition(check="git-head", description="", repository=str(shop.path), branch="main", sha=shop.c4)
    assert head_drift(pre) is None
    (shop.path / "debug.log").write_text("left behind\n")
    assert "local changes: debug.log" in head_drift(pre)
    (shop.path / "debug.log").unlink()
    moved = commit(shop.path, "Hotfix on the box", {"app.js": "v5\n"}, date="2024-03-06T12:00:00+00:00")
    assert f"moved from {shop.c4[:12]} to {moved[:12]} ('Hotfix on the box')" in head_drift(pre)
