"""Versions of a service and how to pick one to go back to. Pure: no git, no I/O.

The git tasks (:mod:`sevflow.tasks.git`) read commits into :class:`CommitInfo` and hand them
here; the decisions of the runbook's "Identify last good version" and "Git shows config
history" steps are made by the functions below, so they can be tested without a repository.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

from sevflow import markdown as md
from pydantic import BaseModel, Field, field_validator

GOOD_VALUES = frozenset({"yes", "true", "1", "good"})
"""Trailer values (case-insensitive) that mark a commit known to be good."""

MAX_LISTED_COMMITS = 30
"""The approval form lists at most this many commits; the rest are counted."""

# `Key: value`, the key as git accepts it (letters, digits, dashes), spaces allowed before ':'.
_TRAILER_LINE = re.compile(r"^(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)[ \t]*:[ \t]*(?P<value>.*)$")
_SHORTSTAT = {
    "files_changed": re.compile(r"(\d+) files? changed"),
    "insertions": re.compile(r"(\d+) insertions?\(\+\)"),
    "deletions": re.compile(r"(\d+) deletions?\(-\)"),
}


# `git@host:owner/repo.git`: the scp-like form of an ssh address (no `://`).
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!//)")
REMOTE_SCHEMES = ("https", "http", "ssh", "git", "file")


def is_remote_repository(repository: str) -> bool:
    """True if a service target's `repository` is an address to fetch (https, ssh, file://)
    rather than a path on this machine."""
    text = repository.strip()
    return "://" in text or bool(_SCP_LIKE.match(text))


def check_repository_address(repository: str) -> str:
    """The address, or ValueError saying what to fix: an unknown scheme, or a password or
    token written into it (it would be shown in every plan and log line that names it)."""
    text = repository.strip()
    if not is_remote_repository(text) or _SCP_LIKE.match(text):
        return text
    parts = urlsplit(text)
    if parts.scheme not in REMOTE_SCHEMES:
        raise ValueError(f"repository {text!r}: unknown scheme {parts.scheme!r}; use one of "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)} or a path on this machine")
    if parts.password is not None:
        raise ValueError("repository: the address carries a password or token (user:secret@host); "
                         "put the address without it and the secret in `repository_credential`")
    return text


def remote_cache_path(repository: str, home: str | None = None) -> Path:
    """Where this machine keeps its own checkout of a remote repository: under sevflow's
    state folder (`$SEVFLOW_HOME`, default ~/.sevflow), one folder per address."""
    root = Path(home or os.environ.get("SEVFLOW_HOME") or Path.home() / ".sevflow").expanduser()
    text = repository.strip()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40] or "repo"
    return root / "repos" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class CommitInfo(BaseModel):
    """One commit as the runbook talks about it."""

    sha: str
    short: str
    subject: str
    author: str
    authored_at: datetime = Field(description="timezone-aware, UTC")
    tags: list[str] = Field(default_factory=list)
    trailers: dict[str, str] = Field(default_factory=dict, description="keys as written")

    @field_validator("authored_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Naive datetimes are ambiguous across on-call timezones: refuse them.
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("authored_at must be timezone-aware")
        return value.astimezone(timezone.utc)

    def trailer(self, key: str) -> str | None:
        """The value of trailer `key`, matched case-insensitively as git does."""
        return trailer_value(self.trailers, key)

    def oneline(self) -> str:
        """Like `git log --oneline`."""
        return f"{self.short} {self.subject}"


class RepoStatus(BaseModel):
    """The checkout a procedure is about to act on."""

    path: str
    branch: str
    head_sha: str
    dirty: bool
    dirty_files: list[str] = Field(default_factory=list)


class RollbackPreview(BaseModel):
    """What rolling back from `from_sha` (the running version) to `to_sha` will undo."""

    from_sha: str
    to_sha: str
    commits: list[CommitInfo] = Field(default_factory=list, description="to_sha..from_sha, newest first")
    diff_stat: str = Field(default="", description="`git diff --stat to_sha from_sha`")
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    to_tree: str = Field(default="", description="the tree of to_sha: exactly what will be put in place")
    diff: str = Field(default="", description="`git diff to_sha from_sha`, cut at MAX_DIFF_CHARS")


MAX_DIFF_CHARS = 100_000
"""Longest diff shown in a plan; the plan's tree sha names the exact content either way."""


class RestoredVersion(BaseModel):
    """The outcome of a rollback commit.

    `created` is False when nothing was committed: the same run already made this commit
    (a re-run), or the branch already had exactly the requested content.
    """

    previous_head: str
    new_head: str
    restored_sha: str
    created: bool


class ConfigDiff(BaseModel):
    """How a configuration file changed between `from_sha` and the branch head.

    `diff` is `git diff from_sha head -- path`: restoring the file reverses it.
    """

    path: str
    from_sha: str
    head_sha: str
    diff: str
    identical: bool
    blob: str = Field(default="", description="the file's blob at from_sha: exactly what will be restored")


def trailer_value(trailers: dict[str, str], key: str) -> str | None:
    """Look a trailer up case-insensitively; the last one written wins."""
    wanted = key.lower()
    found: str | None = None
    for name, value in trailers.items():
        if name.lower() == wanted:
            found = value
    return found


def parse_trailers(message: str) -> dict[str, str]:
    """The trailers of a commit message: the `Key: value` lines of its last paragraph.

    As in git, the subject paragraph never holds trailers, every line of the block must be
    a trailer (indented lines continue the one above), and a later key overrides an earlier one.
    """
    lines = message.replace("\r\n", "\n").rstrip().split("\n")
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    paragraphs = [p for p in paragraphs if p]
    if len(paragraphs) < 2:
        return {}

    trailers: dict[str, str] = {}
    last_key: str | None = None
    for line in paragraphs[-1]:
        if line[0] in " \t" and last_key is not None:
            trailers[last_key] = f"{trailers[last_key]} {line.strip()}".strip()
            continue
        if line.startswith("(cherry picked from commit "):
            # `git cherry-pick -x` appends this line to the trailer block.
            last_key = None
            continue
        match = _TRAILER_LINE.match(line)
        if match is None:
            # Prose in the last paragraph: it is not a trailer block at all.
            return {}
        last_key = match["key"]
        trailers.pop(last_key, None)  # keep the order of the last occurrence
        trailers[last_key] = match["value"].strip()
    return trailers


def is_marked_good(commit: CommitInfo, tag_pattern: str, trailer_key: str) -> bool:
    """True if a tag matches the glob `tag_pattern`, or trailer `trailer_key` says yes/true/1/good."""
    if tag_pattern and any(fnmatchcase(tag, tag_pattern) for tag in commit.tags):
        return True
    value = commit.trailer(trailer_key) if trailer_key else None
    return value is not None and value.strip().lower() in GOOD_VALUES


def pick_last_good(
    history: list[CommitInfo],
    head_sha: str,
    tag_pattern: str,
    trailer_key: str,
) -> CommitInfo | None:
    """The newest known-good commit of `history` (newest first) other than the head.

    The head is what is running and broken, so even if it was marked good it is not a
    version to go back to. None when no other commit is marked.
    """
    for commit in history:
        if commit.sha == head_sha:
            continue
        if is_marked_good(commit, tag_pattern, trailer_key):
            return commit
    return None


def previous_config_version(history_of_file: list[CommitInfo]) -> CommitInfo | None:
    """The version of a file before its latest change (history newest first), if any."""
    return history_of_file[1] if len(history_of_file) >= 2 else None


def parse_diff_summary(stat: str) -> tuple[int, int, int]:
    """(files changed, insertions, deletions) from the summary line of `git diff --stat`."""
    summary = next((line for line in reversed(stat.splitlines()) if "changed" in line), "")
    counts = []
    for pattern in _SHORTSTAT.values():
        match = pattern.search(summary)
        counts.append(int(match.group(1)) if match else 0)
    return counts[0], counts[1], counts[2]


def render_preview_markdown(preview: RollbackPreview) -> str:
    """Markdown for the approval form: the commits being undone and the diff stat."""
    running, target = preview.from_sha[:12], preview.to_sha[:12]
    if not preview.commits and preview.files_changed == 0:
        return f"Nothing to roll back: `{running}` already has the content of `{target}`."

    count = len(preview.commits)
    lines = [
        f"Rolling back from `{running}` (running) to `{target}`: "
        f"{count} commit{'s' if count != 1 else ''} undone, "
        f"{preview.files_changed} file{'s' if preview.files_changed != 1 else ''} changed, "
        f"+{preview.insertions} −{preview.deletions}.",
        "",
    ]
    if preview.commits:
        lines += ["**Commits being rolled back** (newest first):", ""]
        for commit in preview.commits[:MAX_LISTED_COMMITS]:
            when = commit.authored_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            lines.append(f"- `{commit.short}` {md.escape(commit.subject)} — {md.escape(commit.author)}, {when}")
        if count > MAX_LISTED_COMMITS:
            lines.append(
                f"- …and {count - MAX_LISTED_COMMITS} more "
                f"(`git log --oneline {target}..{running}`)"
            )
        lines.append("")
    lines += [
        f"**Diff stat** (`git diff --stat {target} {running}`):",
        "",
        md.fence(preview.diff_stat or "(no file changes)", "text"),
    ]
    if preview.diff:
        lines += ["", f"**Full diff being undone** (`git diff {target} {running}`):", "", md.fence(preview.diff, "diff")]
    return "\n".join(lines)
