"""The pure decisions of the rollback procedures: no git, no server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from sevflow.versions import (
    MAX_LISTED_COMMITS,
    CommitInfo,
    RollbackPreview,
    is_marked_good,
    parse_diff_summary,
    parse_trailers,
    pick_last_good,
    previous_config_version,
    render_preview_markdown,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def commit(n: int, *, tags: list[str] | None = None, trailers: dict[str, str] | None = None) -> CommitInfo:
    sha = f"{n:040x}"
    return CommitInfo(
        sha=sha,
        short=sha[-7:],
        subject=f"change {n}",
        author="Ada",
        authored_at=T0 + timedelta(hours=n),
        tags=tags or [],
        trailers=trailers or {},
    )


# -- parse_trailers ---------------------------------------------------------------------------


def test_trailers_are_the_key_value_lines_of_the_last_paragraph() -> None:
    message = "Fix checkout\n\nThe cart lost items: fixed.\n\nKnown-Good: yes\nReviewed-by: Bo <bo@x>\n"
    assert parse_trailers(message) == {"Known-Good": "yes", "Reviewed-by": "Bo <bo@x>"}


def test_trailer_keys_keep_their_spelling_and_continuations_are_joined() -> None:
    message = "Subject\n\nsevflow-run: abc\nNote: first\n  second\n"
    assert parse_trailers(message) == {"sevflow-run": "abc", "Note": "first second"}


@pytest.mark.parametrize(
    "message",
    [
        "Known-Good: yes",  # the subject line is never a trailer
        "Subject\n\nKnown-Good: yes\nbut then some prose",  # prose: not a trailer block
        "Subject\n\nKnown-Good: yes\n\nA closing paragraph of prose.",
        "",
    ],
)
def test_no_trailers(message: str) -> None:
    assert parse_trailers(message) == {}


def test_later_trailer_wins_and_cherry_pick_line_is_tolerated() -> None:
    message = "S\n\nKnown-Good: no\nKnown-Good: yes\n(cherry picked from commit 1234abcd)\n"
    assert parse_trailers(message) == {"Known-Good": "yes"}


def test_crlf_messages() -> None:
    assert parse_trailers("S\r\n\r\nKnown-Good: true\r\n") == {"Known-Good": "true"}


# -- is_marked_good / pick_last_good -------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "trailers", "good"),
    [
        (["good-2024-03-01"], {}, True),
        (["v1.2.0", "good-1"], {}, True),
        (["v1.2.0"], {}, False),
        (["not-good-1"], {}, False),  # the glob is anchored
        ([], {"Known-Good": "yes"}, True),
        ([], {"known-good": "TRUE"}, True),  # keys are case-insensitive
        ([], {"Known-Good": "1"}, True),
        ([], {"Known-Good": "good"}, True),
        ([], {"Known-Good": "no"}, False),
        ([], {"Known-Goodish": "yes"}, False),
        ([], {}, False),
    ],
)
def test_is_marked_good(tags: list[str], trailers: dict[str, str], good: bool) -> None:
    assert is_marked_good(commit(1, tags=tags, trailers=trailers), "good-*", "Known-Good") is good


def test_last_good_by_tag() -> None:
    history = [commit(4), commit(3), commit(2, tags=["good-2"]), commit(1, tags=["good-1"])]
    assert pick_last_good(history, history[0].sha, "good-*", "Known-Good") == history[2]


def test_last_good_by_trailer_is_newest_marked() -> None:
    history = [commit(4), commit(3, trailers={"Known-Good": "yes"}), commit(2, tags=["good-2"])]
    assert pick_last_good(history, history[0].sha, "good-*", "Known-Good") == history[1]


def test_head_is_never_the_last_good_version() -> None:
    history = [commit(3, tags=["good-3"]), commit(2), commit(1, trailers={"Known-Good": "yes"})]
    assert pick_last_good(history, history[0].sha, "good-*", "Known-Good") == history[2]


def test_no_good_version() -> None:
    history = [commit(2, tags=["good-2"]), commit(1, tags=["v1"])]
    assert pick_last_good(history, history[0].sha, "good-*", "Known-Good") is None
    assert pick_last_good([], "0" * 40, "good-*", "Known-Good") is None


def test_previous_config_version_is_the_one_before_the_latest_change() -> None:
    history = [commit(3), commit(2), commit(1)]
    assert previous_config_version(history) == history[1]
    assert previous_config_version(history[:1]) is None
    assert previous_config_version([]) is None


# -- models and rendering ----------------------------------------------------------------------


def test_authored_at_is_utc_and_must_be_aware() -> None:
    plus_two = timezone(timedelta(hours=2))
    fields = commit(1).model_dump()
    info = CommitInfo.model_validate({**fields, "authored_at": datetime(2024, 3, 1, 12, tzinfo=plus_two)})
    assert info.authored_at == datetime(2024, 3, 1, 10, tzinfo=timezone.utc)
    assert info.authored_at.utcoffset() == timedelta(0)
    with pytest.raises(ValidationError):
        CommitInfo.model_validate({**fields, "authored_at": datetime(2024, 3, 1, 12)})


@pytest.mark.parametrize(
    ("stat", "numbers"),
    [
        (" a | 2 +-\n b | 1 +\n 2 files changed, 2 insertions(+), 1 deletion(-)", (2, 2, 1)),
        (" a | 1 +\n 1 file changed, 1 insertion(+)", (1, 1, 0)),
        (" a | 3 ---\n 1 file changed, 3 deletions(-)", (1, 0, 3)),
        ("", (0, 0, 0)),
    ],
)
def test_parse_diff_summary(stat: str, numbers: tuple[int, int, int]) -> None:
    assert parse_diff_summary(stat) == numbers


def test_preview_markdown_lists_commits_and_diff_stat() -> None:
    preview = RollbackPreview(
        from_sha=commit(3).sha,
        to_sha=commit(1).sha,
        commits=[commit(3), commit(2)],
        diff_stat=" app.js | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)",
        files_changed=1,
        insertions=1,
        deletions=1,
    )
    text = render_preview_markdown(preview)
    assert "2 commits undone" in text
    assert f"- `{commit(3).short}` change 3 — Ada, 2024-03-01 15:00:00 UTC" in text
    assert f"- `{commit(2).short}` change 2" in text
    assert "```text\n app.js | 2 +-" in text
    assert preview.to_sha[:12] in text and preview.from_sha[:12] in text


def test_preview_markdown_caps_long_commit_lists() -> None:
    commits = [commit(n) for n in range(MAX_LISTED_COMMITS + 5, 0, -1)]
    preview = RollbackPreview(from_sha=commits[0].sha, to_sha=commit(0).sha, commits=commits, files_changed=1)
    text = render_preview_markdown(preview)
    assert "…and 5 more" in text
    assert text.count("\n- `") == MAX_LISTED_COMMITS


def test_preview_markdown_when_nothing_changes() -> None:
    preview = RollbackPreview(from_sha=commit(2).sha, to_sha=commit(2).sha)
    assert render_preview_markdown(preview).startswith("Nothing to roll back")
