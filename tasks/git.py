"""Git: the service's checkout, for the runbook's "Application Rollback" and
"Configuration Rollback" procedures.

Each task opens the repository itself (GitPython), makes a few git calls and returns a
typed value from :mod:`sevflow.versions`. Read-only steps raise :class:`PreflightError` on
any problem. The two mutating steps never rewrite history: they add one commit on the
production branch, marked with the run's key, and check before they act, so re-running a
procedure does not roll back twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from git import Git, Repo
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

from sevflow.blocks.service import ServiceTarget
from sevflow.errors import CommandFailed, ConfigurationError, DriftError, PreflightError
from sevflow.models import GitRestore, Precondition, ServiceSpec
from sevflow.tasks.common import step
from sevflow.versions import (
    CommitInfo,
    ConfigDiff,
    RepoStatus,
    RestoredVersion,
    RollbackPreview,
    parse_diff_summary,
    is_remote_repository,
    parse_trailers,
)
from sevflow.versions import MAX_DIFF_CHARS

# What the git steps act on: the block itself, a run's reading of it, or an approved
# operation (each has service, repository_path and branch).
Checkout = ServiceTarget | ServiceSpec | GitRestore

GIT_TIMEOUT_SECONDS = 120.0
"""Longest any single git command may run before it is killed."""

RUN_TRAILER = "Sevflow-Run"
FROM_TRAILER = "Rolled-Back-From"

# Field and record separators for `git log --format`: bytes no commit message contains.
_FIELD, _RECORD = "\x1f", "\x1e"
_LOG_FORMAT = "--format=%H%x1f%h%x1f%an%x1f%aI%x1f%s%x1f%B%x1e"
_MAX_LISTED_FILES = 20


# -- plumbing shared by the steps ---------------------------------------------------------


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    try:
        return get_run_logger()
    except MissingContextError:
        # Called outside a flow run (tests, the command line): log to the module logger.
        return get_logger(__name__)


@contextmanager
def _open(target: Checkout) -> Iterator[Repo]:
    """The target's checkout, closed afterwards; PreflightError if there is none.

    A remote repository (an address, not a path) is first fetched into this machine's cache
    of it and the cache set to the remote's branch, under a lock (two runs on one worker
    share the cache): every step reads the remote as it is now."""
    if is_remote_repository(target.repository):
        with _remote_access(target) as env, _cache_lock(target.repository_path):
            _sync_cache(target, env)
            with _open_local(target) as repo:
                repo.sevflow_remote_env = env  # type: ignore[attr-defined]  # for the push
                yield repo
        return
    with _open_local(target) as repo:
        yield repo


def _credentials_block(target: Checkout) -> str | None:
    if isinstance(target, ServiceTarget):
        return target._block_document_name or target.service_name if target.repository_credential else None  # type: ignore[attr-defined]
    return target.credentials_block


@contextmanager
def _remote_access(target: Checkout) -> Iterator[dict[str, str]]:
    """Environment for git commands that reach the remote: never a prompt, and the block's
    credential handed over through GIT_ASKPASS (https) or a key file (ssh) that exist only
    while the commands run. The credential is never in an argument, the address or a log."""
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
    block = _credentials_block(target)
    if block is None:
        yield env
        return
    live = target if isinstance(target, ServiceTarget) else ServiceTarget.for_service(block)
    username, secret = live.repository_secret()
    if not secret:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="sevflow-git-auth-") as scratch:
        if _is_ssh(target.repository):
            key = os.path.join(scratch, "key")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secret.strip() + "\n")
            env["GIT_SSH_COMMAND"] = f"ssh -i {shlex.quote(key)} -o IdentitiesOnly=yes -o BatchMode=yes"
        else:
            askpass = os.path.join(scratch, "askpass")
            fd = os.open(askpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as out:
                out.write('#!/bin/sh\ncase "$1" in\n  Username*) printf \'%s\\n\' "$SEVFLOW_GIT_USERNAME" ;;\n'
                          '  *) printf \'%s\\n\' "$SEVFLOW_GIT_PASSWORD" ;;\nesac\n')
            env |= {"GIT_ASKPASS": askpass, "SEVFLOW_GIT_USERNAME": username or "git",
                    "SEVFLOW_GIT_PASSWORD": secret}
        env["SEVFLOW_GIT_MASK"] = secret  # read back by _remote_git to mask git's messages
        yield env


def _is_ssh(repository: str) -> bool:
    text = repository.strip()
    return text.startswith("ssh://") or ("://" not in text and "@" in text.split(":", 1)[0])


_LOCK_WAIT_SECONDS = 600.0


@contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """Hold this machine's lock on one repository cache (another run may be using it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    with open(path.parent / f"{path.name}.lock", "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PreflightError(f"The cache {path} of a remote repository stayed locked by another run for "
                                         f"{_LOCK_WAIT_SECONDS:g} s. Nothing was changed; re-run when it is done.")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remote_git(cwd: Path, env: dict[str, str], *args: str) -> str:
    """`git -c credential.helper= args...` in `cwd` (no credential helper may store or offer
    a credential); on failure, GitCommandError with the secret masked from its message."""
    command = [Git.GIT_PYTHON_GIT_EXECUTABLE or "git", "-c", "credential.helper=", *args]
    mask = env.get("SEVFLOW_GIT_MASK")
    try:
        return str(Git(str(cwd)).execute(command, env=env, kill_after_timeout=GIT_TIMEOUT_SECONDS))
    except GitCommandError as exc:
        if mask:
            exc.stderr = str(exc.stderr).replace(mask, "********")
            exc.stdout = str(exc.stdout).replace(mask, "********")
        raise


def _sync_cache(target: Checkout, env: dict[str, str]) -> None:
    """Make this machine's cache of the remote repository a checkout of the remote's branch
    as it is now (fetch, then reset the cache's branch to it). Changes only the cache."""
    url, path = target.repository.strip(), target.repository_path
    try:
        if not (path / ".git").is_dir():
            path.mkdir(parents=True, exist_ok=True)
            _remote_git(path, env, "init", "-q", "-b", target.branch)
            _remote_git(path, env, "remote", "add", "origin", url)
        _logger().info("Fetching %s (branch %s) into %s", url, target.branch, path)
        _remote_git(path, env, "fetch", "--quiet", "--prune", "--tags", "--force", "origin",
                    "+refs/heads/*:refs/remotes/origin/*")
    except GitCommandError as exc:
        raise PreflightError(
            f"Could not fetch {url} for {target.service_name}: {_stderr(exc)}. Check `repository` (the address) and "
            f"`repository_credential` in the {target.service_name!r} service target block, and that this worker "
            "reaches the host. Nothing was changed."
        ) from exc
    try:
        _remote_git(path, env, "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{target.branch}^{{commit}}")
    except GitCommandError as exc:
        raise PreflightError(
            f"{url} has no branch {target.branch!r}. Check `branch` in the {target.service_name!r} service target "
            f"block (`git ls-remote --heads {url}` lists the branches). Nothing was changed."
        ) from exc
    _remote_git(path, env, "checkout", "-q", "-f", "-B", target.branch, f"refs/remotes/origin/{target.branch}")
    _remote_git(path, env, "clean", "-ffdq")


def local_checkout(repository: str, branch: str, service: str, credentials_block: str | None,
                   at: str | None = None) -> Path:
    """This machine's checkout of the service, for its commands to run in: the path itself,
    or, for a remote repository, the cache brought to the remote's branch as it is now and,
    with `at`, to exactly that commit (the one the run made and pushed), which must be on the
    branch: a branch rewritten since is drift, and nothing runs."""
    target = GitRestore(service=service, repository=repository, branch=branch, expected_head="", source_sha="",
                        source_tree="", run_key="checkout", subject="", credentials_block=credentials_block)
    if not is_remote_repository(repository):
        return target.repository_path
    with _open(target) as repo:
        if at:
            try:
                _run(repo, "merge-base", "--is-ancestor", at, "HEAD")
            except GitCommandError:
                raise DriftError(
                    f"The commit this run pushed ({at[:12]}) is no longer on {repository} ({branch}): the branch was "
                    "rewritten since. Nothing was built or deployed; run the procedure again to review the new state."
                ) from None
            if _run(repo, "rev-parse", "HEAD").strip() != at:
                _logger().warning("%s (%s) moved past this run's commit %s since it was pushed; running at %s, "
                                  "the approved change, not at the newer commits.", repository, branch, at[:12], at[:12])
                _run(repo, "checkout", "-q", "-f", "-B", branch, at)
        return target.repository_path


def _push(repo: Repo, target: Checkout, head: str, new: str) -> None:
    """Push `new` (a child of `head`) to the remote's branch, fast-forward only. If the remote
    refuses (it moved since `head` was fetched), the cache goes back to `head` and nothing
    was changed on the remote: DriftError."""
    env: dict[str, str] = getattr(repo, "sevflow_remote_env", {})
    url = target.repository.strip()
    path = Path(str(repo.working_tree_dir))
    try:
        # No --force of any kind: git and the remote refuse anything but a fast-forward.
        _remote_git(path, env, "push", "--quiet", "--porcelain", "origin", f"{new}:refs/heads/{target.branch}")
    except GitCommandError as exc:
        _run(repo, "reset", "-q", "--hard", head)
        try:
            listed = _remote_git(path, env, "ls-remote", "--heads", "origin", f"refs/heads/{target.branch}")
            now = listed.split()[0] if listed.strip() else "(deleted)"
        except GitCommandError:
            now = "(could not be read)"
        if now != head:
            raise DriftError(
                f"The remote {url} refused the rollback commit: its branch {target.branch!r} moved from "
                f"{head[:12]} to {now[:12]} since the plan was approved (sevflow pushes fast-forward only). "
                "Nothing was changed on the remote. Re-run the procedure to review and approve against the new head."
            ) from exc
        raise PreflightError(
            f"Pushing the rollback commit to {url} ({target.branch}) failed: {_stderr(exc)}. The remote is "
            f"unchanged (still {head[:12]}). Check that the worker may push there (`repository_credential`), "
            "then re-run."
        ) from exc
    _logger().info("Pushed %s to %s (%s), fast-forward from %s", new[:12], url, target.branch, head[:12])


@contextmanager
def _open_local(target: Checkout) -> Iterator[Repo]:
    path = target.repository_path
    if not path.is_dir():
        raise PreflightError(
            f"The checkout of {target.service_name} is missing: {path} "
            f"{'is not a directory' if path.exists() else 'does not exist'}. Clone the service "
            f"there, or fix `repository` in the {target.service_name!r} service target block."
        )
    try:
        repo = Repo(path)
    except (InvalidGitRepositoryError, NoSuchPathError) as exc:
        raise PreflightError(
            f"{path} is not a git repository (no .git there), so {target.service_name} cannot be "
            f"rolled back from it. Point `repository` in the {target.service_name!r} service target "
            "block at the root of the service's git checkout."
        ) from exc
    try:
        if repo.bare:
            raise PreflightError(
                f"{path} is a bare git repository: it has no working tree to deploy from. Point "
                f"`repository` in the {target.service_name!r} service target block at a checkout."
            )
        yield repo
    finally:
        repo.close()


def _run(repo: Repo, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `git args...` in the checkout; raises GitCommandError on a non-zero exit."""
    command = [Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args]
    return str(repo.git.execute(command, env=env, kill_after_timeout=GIT_TIMEOUT_SECONDS))


def _stderr(exc: GitCommandError) -> str:
    text = str(exc.stderr).strip()
    return text.removeprefix("stderr: '").removesuffix("'").strip() or f"exit status {exc.status}"


def _git(repo: Repo, *args: str, env: dict[str, str] | None = None) -> str:
    """Like _run, for calls made before any change: a failure is a PreflightError."""
    try:
        return _run(repo, *args, env=env)
    except GitCommandError as exc:
        raise PreflightError(
            f"`git {args[0]}` failed in {repo.working_tree_dir}: {_stderr(exc)}. "
            "Nothing was changed; fix the cause and re-run."
        ) from exc


def _literal(path: str) -> str:
    # Pathspec magic (`:(glob)`, `:!`) in a file name must not widen what git touches.
    return f":(literal){path}"


def _commits(repo: Repo, *log_args: str) -> list[CommitInfo]:
    """`git log` as CommitInfo, newest first, with tags and trailers filled in."""
    output = _git(repo, "log", "--no-show-signature", _LOG_FORMAT, *log_args)
    tags = _tags_by_commit(repo)
    commits: list[CommitInfo] = []
    for record in output.split(_RECORD):
        record = record.lstrip("\n")
        if not record:
            continue
        sha, short, author, authored, subject, body = record.split(_FIELD, 5)
        commits.append(
            CommitInfo(
                sha=sha,
                short=short,
                subject=subject,
                author=author,
                authored_at=datetime.fromisoformat(authored),
                tags=tags.get(sha, []),
                trailers=parse_trailers(body),
            )
        )
    return commits


def _tags_by_commit(repo: Repo) -> dict[str, list[str]]:
    """Tag names by the commit they point at (annotated tags peeled)."""
    output = _git(
        repo, "for-each-ref", "--format=%(objectname) %(*objectname) %(refname:strip=2)", "refs/tags"
    )
    tags: dict[str, list[str]] = {}
    for line in output.splitlines():
        sha, peeled, name = line.split(" ", 2)
        tags.setdefault(peeled or sha, []).append(name)
    return {sha: sorted(names) for sha, names in tags.items()}


def _branch_head(repo: Repo, target: Checkout) -> str:
    try:
        return _run(repo, "rev-parse", "--verify", f"refs/heads/{target.branch}^{{commit}}")
    except GitCommandError as exc:
        raise PreflightError(
            f"Branch {target.branch!r} does not exist or has no commits in {repo.working_tree_dir}. "
            f"Check `branch` in the {target.service_name!r} service target block (`git branch -a` "
            "lists the branches there)."
        ) from exc


def _resolve(repo: Repo, ref: str) -> str:
    """The full sha of the commit `ref` names (hash, tag or branch)."""
    try:
        if not ref.strip():
            raise ValueError("empty ref")
        return _run(repo, "rev-parse", "--verify", "--end-of-options", f"{ref.strip()}^{{commit}}")
    except (GitCommandError, ValueError) as exc:
        raise PreflightError(
            f"Unknown version {ref!r} in {repo.working_tree_dir}: no commit, tag or branch has "
            f"that name. Run `git log --oneline -10` there and pick a commit hash or tag from it."
        ) from exc


def _check_checkout(repo: Repo, target: Checkout) -> str:
    """The head sha, once sure the production branch is the one checked out."""
    path = repo.working_tree_dir
    if repo.head.is_detached:
        raise PreflightError(
            f"{path} has a detached HEAD (at {repo.head.commit.hexsha[:12]}), not branch "
            f"{target.branch!r}. Run `git switch {target.branch}` there, then re-run."
        )
    checked_out = repo.head.ref.name
    if checked_out != target.branch:
        raise PreflightError(
            f"{path} has branch {checked_out!r} checked out, but {target.service_name} runs from "
            f"{target.branch!r}. Run `git switch {target.branch}` there (or fix `branch` in the "
            "service target block), then re-run."
        )
    return _branch_head(repo, target)


def _dirty_files(repo: Repo) -> list[str]:
    """Modified, staged and untracked (not ignored) files, as `git status` names them."""
    output = _git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    entries = iter(output.split("\0"))
    files: list[str] = []
    for entry in entries:
        if not entry:
            continue
        status, name = entry[:2], entry[3:]
        files.append(name)
        if "R" in status or "C" in status:
            next(entries, None)  # a rename or copy is followed by its source path
    return files


def _check_clean(repo: Repo) -> None:
    files = _dirty_files(repo)
    if files:
        listed = ", ".join(files[:_MAX_LISTED_FILES])
        more = f" and {len(files) - _MAX_LISTED_FILES} more" if len(files) > _MAX_LISTED_FILES else ""
        raise PreflightError(
            f"The checkout {repo.working_tree_dir} has local changes: {listed}{more}. sevflow only "
            "acts on a clean checkout so nobody's work is lost. Commit them, stash them "
            "(`git stash --include-untracked`) or remove them, then re-run. Nothing was changed."
        )


def _config_path(target: Checkout, path: str) -> str:
    """`path` as written in the target's config_files, or PreflightError."""

    def normal(p: str) -> str:
        return PurePosixPath(p.strip().replace("\\", "/")).as_posix()

    allowed = {normal(p): p for p in target.config_files}
    if normal(path) not in allowed:
        listed = ", ".join(target.config_files) if target.config_files else "none are configured"
        raise PreflightError(
            f"{path!r} is not a configuration file sevflow may restore for {target.service_name} "
            f"(allowed: {listed}). Use one of those, or add it to `config_files` in the "
            f"{target.service_name!r} service target block."
        )
    return normal(allowed[normal(path)])


def _file_at(repo: Repo, sha: str, path: str) -> tuple[str, str]:
    """(mode, blob sha) of `path` in commit `sha`, or PreflightError if it is not a file there."""
    output = _git(repo, "ls-tree", "-z", sha, "--", path)
    for entry in filter(None, output.split("\0")):
        meta, _, name = entry.partition("\t")
        mode, kind, blob = meta.split(" ")
        if name == path and kind == "blob":
            return mode, blob
    raise PreflightError(
        f"{path} is not a file in commit {sha[:12]} of {repo.working_tree_dir}, so it cannot be "
        f"restored from there. Pick a version from `git log --oneline -- {path}`."
    )


def _check_run_key(run_key: str) -> None:
    if not run_key or "\n" in run_key or "\r" in run_key:
        raise ConfigurationError(f"A run key is a single non-empty line, got {run_key!r}.")


def _tree(repo: Repo, sha: str) -> str:
    return _git(repo, "rev-parse", f"{sha}^{{tree}}")


def _fast_forward(repo: Repo, target: Checkout, head: str, new: str, run_key: str) -> None:
    """Move the branch, index and working tree from `head` to its child `new`."""
    try:
        # --ff-only: git itself refuses if the branch moved or a local change would be lost.
        # The reflog entry names the run, for whoever reads `git reflog` during the incident.
        env = {"GIT_REFLOG_ACTION": f"sevflow {run_key}"}
        _run(repo, "merge", "--ff-only", "--no-stat", new, env=env)
    except GitCommandError as exc:
        if _branch_head(repo, target) == head:
            raise PreflightError(
                f"git refused to update {target.branch!r} in {repo.working_tree_dir}: "
                f"{_stderr(exc)}. Nothing was changed; fix the cause and re-run."
            ) from exc
        raise CommandFailed(
            f"Updating {target.branch!r} in {repo.working_tree_dir} to {new[:12]} failed "
            f"half-way: {_stderr(exc)}. Check `git status` there before anything else.",
            returncode=exc.status if isinstance(exc.status, int) else None,
            output=_stderr(exc),
        ) from exc


def _commit_restored(
    op: GitRestore,
    *,
    wanted_tree: Callable[[Repo, str, str], str],
    subject: Callable[[CommitInfo], str],
) -> RestoredVersion:
    """Add one commit on the branch whose tree is `wanted_tree(repo, head, restored_sha)`.

    Check before act: a head made by this run with that tree is returned as is; a head that
    moved since approval, or a dirty checkout, is refused before anything changes.
    """
    target, ref, expected_head = op, op.source_sha, op.expected_head
    run_key = op.run_key.strip()
    _check_run_key(run_key)
    log = _logger()
    with _open(target) as repo:
        head = _check_checkout(repo, target)
        restored = _resolve(repo, ref)
        tree = wanted_tree(repo, head, restored)
        head_tree = _tree(repo, head)
        head_commit = _commits(repo, "--max-count=1", head)[0]

        if head_commit.trailer(RUN_TRAILER) == run_key and head_tree == tree:
            # This run already made the commit (the procedure is being re-run).
            previous = head_commit.trailer(FROM_TRAILER) or _git(repo, "rev-parse", f"{head}^")
            log.info("%s already restored %s by this run, as %s", target.branch, restored[:12], head[:12])
            return RestoredVersion(
                previous_head=previous, new_head=head, restored_sha=restored, created=False
            )

        if head != expected_head.strip().lower():
            # What was approved is no longer what would happen.
            raise DriftError(
                f"{target.branch!r} in {repo.working_tree_dir} moved from {expected_head[:12]} to "
                f"{head[:12]} ({head_commit.subject!r}) since the change was approved. Nothing "
                "was changed. Re-run the procedure to review and approve against the new head."
            )
        _check_clean(repo)

        if head_tree == tree:
            # Committing would change nothing; an empty rollback commit only adds noise.
            log.info("%s already has the content of %s; nothing to commit", target.branch, restored[:12])
            return RestoredVersion(previous_head=head, new_head=head, restored_sha=restored, created=False)

        restored_commit = _commits(repo, "--max-count=1", restored)[0]
        trailers = f"{RUN_TRAILER}: {run_key}\n{FROM_TRAILER}: {head}"
        log.info("Committing %r on %s in %s", subject(restored_commit), target.branch, repo.working_tree_dir)
        new = _git(repo, "commit-tree", tree, "-p", head, "-m", subject(restored_commit), "-m", trailers)
        _fast_forward(repo, target, head, new, run_key)
        if is_remote_repository(target.repository):
            _push(repo, target, head, new)
        log.info("%s is now %s (was %s)", target.branch, new[:12], head[:12])
        return RestoredVersion(previous_head=head, new_head=new, restored_sha=restored, created=True)


# -- steps ----------------------------------------------------------------------------------


@step("check the repository")
def inspect_repository(target: Checkout) -> RepoStatus:
    """Check the service's checkout is a git repository on the production branch with no
    local changes. Changes nothing; raises PreflightError saying what to fix."""
    _logger().info("Checking %s is a clean checkout of %s", target.repository_path, target.branch)
    with _open(target) as repo:
        head = _check_checkout(repo, target)
        _check_clean(repo)
        return RepoStatus(
            path=str(target.repository_path),
            branch=target.branch,
            head_sha=head,
            dirty=False,
            dirty_files=[],
        )


@step("git log --oneline")
def recent_history(target: Checkout, limit: int = 50) -> list[CommitInfo]:
    """The last `limit` commits of the production branch (first parent), newest first.
    Changes nothing."""
    if limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit}")
    _logger().info("Reading the last %d commits of %s", limit, target.branch)
    with _open(target) as repo:
        head = _branch_head(repo, target)
        return _commits(repo, "--first-parent", f"--max-count={limit}", head)


@step("Check recent deployments")
def deployed_history(target: Checkout, round_: int, limit: int = 50) -> list[CommitInfo]:
    """The production branch's last `limit` commits, newest first: what was deployed and when
    (Production System Down, DIAGNOSE). `round_` tells apart the diagnoses of one run (the
    branch may have changed in between). Changes nothing."""
    _logger().info("Reading the last %d deployed commits of %s", limit, target.branch)
    with _open(target) as repo:
        head = _branch_head(repo, target)
        return _commits(repo, "--first-parent", f"--max-count={limit}", head)


@step("resolve the named version")
def resolve_version(target: Checkout, ref: str) -> CommitInfo:
    """The commit a hash, tag or branch name refers to. Changes nothing.

    A commit that is not in the branch's history is allowed (say, a hotfix tag), but logged.
    """
    log = _logger()
    with _open(target) as repo:
        sha = _resolve(repo, ref)
        head = _branch_head(repo, target)
        try:
            _run(repo, "merge-base", "--is-ancestor", sha, head)
        except GitCommandError:
            log.warning("%s (%s) is not in the history of %s", ref, sha[:12], target.branch)
        return _commits(repo, "--max-count=1", sha)[0]


@step("show what will be rolled back")
def rollback_preview(target: Checkout, to_sha: str) -> RollbackPreview:
    """The commits in to_sha..head and `git diff --stat to_sha head`. Changes nothing."""
    _logger().info("Comparing %s with %s", to_sha, target.branch)
    with _open(target) as repo:
        head = _branch_head(repo, target)
        to = _resolve(repo, to_sha)
        commits = _commits(repo, f"{to}..{head}")
        stat = _git(repo, "diff", "--stat", "--no-color", "--no-ext-diff", to, head)
        files_changed, insertions, deletions = parse_diff_summary(stat)
        diff = _git(repo, "diff", "--no-color", "--no-ext-diff", to, head)
        if len(diff) > MAX_DIFF_CHARS:
            diff = diff[:MAX_DIFF_CHARS] + f"\n... (cut at {MAX_DIFF_CHARS} characters; the tree sha names it all)"
        return RollbackPreview(
            from_sha=head,
            to_sha=to,
            to_tree=_tree(repo, to),
            diff=diff,
            commits=commits,
            diff_stat=stat,
            files_changed=files_changed,
            insertions=insertions,
            deletions=deletions,
        )


@step("show what the hotfix changes")
def hotfix_preview(target: Checkout, fix_sha: str) -> RollbackPreview:
    """What deploying `fix_sha`'s content over the running head changes: `git diff head fix`
    (the diff an approver reads), the fix's tree. Changes nothing."""
    _logger().info("Comparing %s with %s", target.branch, fix_sha)
    with _open(target) as repo:
        head = _branch_head(repo, target)
        fix = _resolve(repo, fix_sha)
        stat = _git(repo, "diff", "--stat", "--no-color", "--no-ext-diff", head, fix)
        files_changed, insertions, deletions = parse_diff_summary(stat)
        diff = _git(repo, "diff", "--no-color", "--no-ext-diff", head, fix)
        if len(diff) > MAX_DIFF_CHARS:
            diff = diff[:MAX_DIFF_CHARS] + f"\n... (cut at {MAX_DIFF_CHARS} characters; the tree sha names it all)"
        return RollbackPreview(from_sha=head, to_sha=fix, to_tree=_tree(repo, fix), diff=diff,
                               commits=_commits(repo, f"{head}..{fix}"), diff_stat=stat,
                               files_changed=files_changed, insertions=insertions, deletions=deletions)


@step("git checkout <commit-hash>", mutating=True)
def restore_version(op: GitRestore) -> RestoredVersion:
    """Put the content of the approved commit on the production branch as one new commit on
    top of the approved head (history is kept; files added since are removed), and update the
    checkout to it. Also returns to the version that was running (the return plan).

    Refuses (DriftError, nothing changed) if the branch moved since approval, the tree to
    restore is not the approved one, or the checkout has local changes; returns
    created=False if this run already did it.
    """

    def wanted_tree(repo: Repo, head: str, restored: str) -> str:
        tree = _tree(repo, restored)
        if op.source_tree and tree != op.source_tree:
            raise DriftError(f"{restored[:12]} now has tree {tree[:12]}, not the approved {op.source_tree[:12]}. "
                             "Nothing was changed.")
        return tree

    return _commit_restored(op, wanted_tree=wanted_tree, subject=lambda commit: op.subject)


@step("git log --oneline -- <config file>")
def config_history(target: Checkout, path: str, limit: int = 20) -> list[CommitInfo]:
    """The last `limit` commits of the production branch that changed the configuration
    file `path`, newest first. Changes nothing."""
    if limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit}")
    path = _config_path(target, path)
    _logger().info("Reading the history of %s on %s", path, target.branch)
    with _open(target) as repo:
        head = _branch_head(repo, target)
        history = _commits(repo, "--first-parent", f"--max-count={limit}", head, "--", _literal(path))
        if not history:
            raise PreflightError(
                f"{path} has no history on {target.branch!r} in {repo.working_tree_dir}: no commit "
                "changed it. Check the path (relative to the repository root) in `config_files` "
                f"of the {target.service_name!r} service target block."
            )
        return history


@step("show the config diff")
def config_diff(target: Checkout, path: str, from_sha: str) -> ConfigDiff:
    """`git diff from_sha head -- path`: how the file changed since that version (restoring
    reverses it). Changes nothing."""
    path = _config_path(target, path)
    _logger().info("Diffing %s between %s and %s", path, from_sha, target.branch)
    with _open(target) as repo:
        head = _branch_head(repo, target)
        sha = _resolve(repo, from_sha)
        _mode, blob = _file_at(repo, sha, path)
        diff = _git(repo, "diff", "--no-color", "--no-ext-diff", sha, head, "--", _literal(path))
        return ConfigDiff(path=path, from_sha=sha, head_sha=head, diff=diff, identical=not diff.strip(), blob=blob)


@step("git checkout <commit> -- <config file>", mutating=True)
def restore_config_file(op: GitRestore) -> RestoredVersion:
    """Put the approved configuration file back as it was at the approved commit, as one new
    commit on the production branch that changes only that file, and update the checkout.

    Same guards as restore_version: refuses if the branch moved since approval, the file's
    content is not the approved blob, or the checkout has local changes; returns
    created=False if this run already did it.
    """
    if not op.path:
        raise ConfigurationError("A configuration restore names the file it restores.")
    path = op.path

    def wanted_tree(repo: Repo, head: str, restored: str) -> str:
        # The head's tree with only this one file replaced, built in a scratch index so the
        # checkout's own index is untouched until the fast-forward.
        mode, blob = _file_at(repo, restored, path)
        if op.source_tree and blob != op.source_tree:
            raise DriftError(f"{path} at {restored[:12]} is blob {blob[:12]}, not the approved "
                             f"{op.source_tree[:12]}. Nothing was changed.")
        with tempfile.TemporaryDirectory(prefix="sevflow-index-") as scratch:
            env = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
            _git(repo, "read-tree", head, env=env)
            _git(repo, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
            return _git(repo, "write-tree", env=env)

    return _commit_restored(op, wanted_tree=wanted_tree, subject=lambda commit: op.subject)


def commit_problems(target: Checkout) -> list[str]:
    """What would stop the rollback commit (and, for a remote repository, its push) that can
    be seen without changing anything: git's identity for the commit, write access to the
    checkout, the remote reachable and accepting a push from this worker (`push --dry-run`).
    A sentence each saying what to fix; empty when all is well. Changes nothing."""
    problems: list[str] = []
    try:
        with _open(target) as repo:
            path = Path(str(repo.working_tree_dir))
            try:
                _run(repo, "var", "GIT_COMMITTER_IDENT")
                _run(repo, "var", "GIT_AUTHOR_IDENT")
            except GitCommandError as exc:
                reason = _stderr(exc).splitlines()[-1] if _stderr(exc) else "no identity"
                problems.append(
                    f"git has no usable identity for the rollback commit in {path} ({reason}): set one for the "
                    "user this worker runs as, e.g. `git config --global user.name \"sevflow on $(hostname)\"` and "
                    "`git config --global user.email sevflow@your.domain`")
            git_dir = Path(repo.git_dir)
            for where in (path, git_dir, git_dir / "objects", git_dir / "refs" / "heads"):
                if not os.access(where, os.W_OK):
                    problems.append(f"this worker's user may not write to {where}: the rollback commit needs it "
                                    f"(`chown -R` the checkout to that user, or run the worker as its owner)")
                    break
            if is_remote_repository(target.repository):
                env: dict[str, str] = getattr(repo, "sevflow_remote_env", {})
                try:
                    _remote_git(path, env, "push", "--dry-run", "--porcelain", "origin",
                                f"refs/heads/{target.branch}:refs/heads/{target.branch}")
                except GitCommandError as exc:
                    problems.append(f"{target.repository} does not accept a push from this worker ({_stderr(exc)}): "
                                    f"check `repository_credential` in the {target.service_name!r} service target "
                                    "block (it must allow writing to the branch)")
    except PreflightError as exc:
        problems.append(str(exc))
    return problems


def head_drift(pre: Precondition) -> str | None:
    """None if the branch is still at the planned head with a clean checkout; else what moved.
    Read-only; used just before an approved plan is carried out."""
    spec = GitRestore(service=pre.repository, repository=pre.repository, branch=pre.branch, expected_head=pre.sha,
                      source_sha=pre.sha, source_tree="", run_key="check", subject="",
                      credentials_block=pre.credentials_block)
    try:
        with _open(spec) as repo:
            head = _branch_head(repo, spec)
            if head != pre.sha:
                moved = _commits(repo, "--max-count=1", head)[0]
                return (f"branch {pre.branch} of {pre.repository} moved from {pre.sha[:12]} to {head[:12]} "
                        f"({moved.subject!r})")
            files = _dirty_files(repo)
            if files:
                return f"the checkout {pre.repository} has local changes: {', '.join(files[:_MAX_LISTED_FILES])}"
    except PreflightError as exc:
        return str(exc)
    return None
