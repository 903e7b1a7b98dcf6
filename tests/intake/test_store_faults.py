"""Real store faults: a lock held by another process, a read-only filesystem and file, a
corrupt file, a full filesystem. Every request is answered (503 with Retry-After while the
store cannot write), /healthz says so, nothing accepted is lost, and the intake recovers by
itself when the fault goes.

The filesystem faults are real: immutable files (chattr +i, on the ext4 of the test's temporary
folder) and a small tmpfs filled up. The test suite runs as root on Linux (see ./dev).
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.intake.conftest import RULES, TOKENS, StoreView
from tests.support.stack import Intake, PrefectServer
from tests.support.wait import until


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def start_intake(stack: PrefectServer, intake: Intake, tmp_path: Path) -> Iterator:
    """An intake of the test's own (the session's blocks, so the same credentials), with its
    store where the test says."""
    started: list[Intake] = []

    def start(state_dir: Path | None = None, wait: bool = True) -> Intake:
        process = Intake(stack.env(), tmp_path / f"intake-{len(started)}", RULES)
        if state_dir is not None:
            process.state_dir = state_dir
        started.append(process)
        process.start(wait=False)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


def send(process: Intake, ident: str, size: int = 0) -> httpx.Response:
    alert = {"id": ident, "summary": f"{ident} fired", "labels": {"team": "faults"},
             "annotations": {"detail": "x" * size}}
    return httpx.post(f"{process.url}/alerts/generic", json=alert, timeout=15,
                      headers={"Authorization": f"Bearer {TOKENS['generic']}"})


def health(process: Intake) -> httpx.Response:
    return httpx.get(f"{process.url}/healthz", timeout=15)


def stored_identities(state_dir: Path) -> set[str]:
    return {row["identity"] for row in StoreView(state_dir / "alerts.db").rows()}


def refused_for_now(r: httpx.Response) -> bool:
    return r.status_code == 503 and int(r.headers["Retry-After"]) > 0


def test_a_lock_held_by_another_process_gets_503_then_recovers(start_intake) -> None:
    process = start_intake()
    accepted = {"generic:lock-before"}
    assert send(process, "lock-before").status_code == 202
    holder = sqlite3.connect(process.state_dir / "alerts.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a backup, a sqlite3 shell)
    try:
        r = send(process, "lock-during")
        assert refused_for_now(r), r.text
        assert "locked" in r.json()["error"]
        h = health(process)
        assert h.status_code == 503 and h.json()["store"]["accepting"] is False
        assert "locked" in h.json()["store"]["error"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    r = until(lambda: (r := send(process, "lock-during")).status_code == 202 and r, what="the store to accept again")
    accepted.add("generic:lock-during")
    assert health(process).status_code == 200
    assert stored_identities(process.state_dir) == accepted


def immutable(paths: list[Path], on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True)


def test_store_files_made_read_only_while_running_get_503_then_recover(start_intake) -> None:
    process = start_intake()
    assert send(process, "ro-before").status_code == 202
    files = [f for f in process.state_dir.iterdir() if f.name.startswith("alerts.db")]
    immutable(files, True)  # the file system refuses every write to the store (EPERM: "disk I/O error")
    try:
        for n in range(3):  # every request answered, none stored
            assert refused_for_now(send(process, f"ro-during-{n}"))
        h = health(process)
        assert h.status_code == 503 and h.json()["store"]["error"], h.text
    finally:
        immutable(files, False)
    until(lambda: send(process, "ro-after").status_code == 202, what="the store to accept again")
    until(lambda: health(process).status_code == 200, what="/healthz to say the store accepts")
    assert stored_identities(process.state_dir) == {"generic:ro-before", "generic:ro-after"}


def test_a_read_only_store_file_at_start_gets_503_until_it_is_writable(start_intake, tmp_path: Path) -> None:
    state = tmp_path / "state-immutable"
    state.mkdir()
    db = state / "alerts.db"
    sqlite3.connect(db).close()  # an (empty) store file
    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        process = start_intake(state)  # starts anyway: the server, the worker and the gates are not its to stop
        h = health(process)
        assert h.status_code == 503 and h.json()["store"]["error"], h.text
        assert refused_for_now(send(process, "immutable-during"))
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    until(lambda: send(process, "immutable-after").status_code == 202, what="the store to open once writable")
    assert health(process).status_code == 200
    assert stored_identities(state) == {"generic:immutable-after"}


def test_a_corrupt_store_is_set_aside_loudly_and_a_fresh_one_started(start_intake, tmp_path: Path) -> None:
    state = tmp_path / "state-corrupt"
    state.mkdir()
    garbage = b"SQLite format 3\x00" + bytes(range(256)) * 64  # a header, then nonsense
    (state / "alerts.db").write_bytes(garbage)
    process = start_intake(state)
    h = health(process)
    assert h.status_code == 200, h.text
    (aside,) = h.json()["store"]["set_aside"]
    assert Path(aside).read_bytes() == garbage  # kept as it was, never deleted
    assert "CANNOT BE READ" in process.log_path.read_text()
    assert send(process, "after-corruption").status_code == 202
    assert stored_identities(state) == {"generic:after-corruption"}


def test_a_full_filesystem_gets_503_and_loses_nothing(start_intake, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "3m") as mnt:
        process = start_intake(mnt / "state")
        accepted = set()
        for n in range(5):
            assert send(process, f"full-before-{n}", size=20_000).status_code == 202
            accepted.add(f"generic:full-before-{n}")
        filler = mnt / "filler"
        with filler.open("wb") as f:  # take every byte left
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        answers = [send(process, f"full-during-{n}-{uuid.uuid4().hex[:4]}", size=200_000) for n in range(3)]
        assert all(refused_for_now(r) for r in answers), [r.status_code for r in answers]
        assert health(process).status_code in (200, 503)  # answered; small writes may still fit
        filler.unlink()
        until(lambda: send(process, "full-after", size=200_000).status_code == 202, what="room on disk again")
        accepted.add("generic:full-after")
        assert stored_identities(process.state_dir) == accepted
        process.stop()
