"""The Memory/Disk Full steps on their own, on a real filesystem and real processes: the
scanner agrees with `du`, the deleter never follows a symlink out of its root even when a
folder is swapped for one after the plan, and a kill is refused for a reused PID."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from sevflow.errors import DriftError
from sevflow.models import DeleteFiles, KillProcess
from sevflow.tasks.filesystem import deletable_files, delete_files, scan_tree
from sevflow.tasks.processes import boot_id, kill_process, read_process
from tests.support.hosts import HOUR_NS, DiskWorld, Processes, mount_small_filesystem, unmount

pytestmark = pytest.mark.usefixtures("stack")  # steps are Prefect tasks: they talk to the session's server


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskWorld]:
    mount = tmp_path / "fs"
    mounted = mount_small_filesystem(mount)
    try:
        yield DiskWorld(mount)
    finally:
        if mounted:
            unmount(mount)


def test_the_scanner_counts_what_du_counts_and_follows_no_symlink(disk: DiskWorld) -> None:
    scan = scan_tree(str(disk.root), top_n=3, recent_since_ns=time.time_ns() - HOUR_NS)
    du = subprocess.run(["du", "-sx", "-B1", str(disk.root)], capture_output=True, text=True, check=True)
    assert scan.total_bytes == int(du.stdout.split()[0])
    assert scan.largest_files[0].path == str(disk.data / "big.bin")
    assert scan.largest_directories[0].path == str(disk.root)
    # Fresh files only (the old ones were dated back): the app log, the fresh temp file, the caches.
    assert scan.recent_bytes == 7 * 1024 * 1024
    assert not any("escape" in f.path for f in scan.largest_files + scan.recent_files)


def test_a_folder_swapped_for_a_symlink_after_the_plan_is_not_followed(disk: DiskWorld) -> None:
    files = deletable_files(str(disk.tmp), 3600)
    assert sorted(f.path for f in files) == ["old-1.tmp", "old-2.tmp", "sub/old-3.tmp"]
    op = DeleteFiles(purpose="temp", host="here", root=str(disk.tmp), min_age_seconds=3600, files=files)

    # After approval, someone moves tmp/sub out of the allow-list and leaves a symlink in its place:
    # the very file the plan names (same inode, size, mtime) is now reachable only through the link.
    os.rename(disk.tmp / "sub", disk.outside / "sub")
    os.symlink(disk.outside / "sub", disk.tmp / "sub")
    # And old-2.tmp is replaced by a symlink to a file outside.
    os.unlink(disk.tmp / "old-2.tmp")
    os.symlink(disk.outside / "secret.db", disk.tmp / "old-2.tmp")
    outside = {k: v for k, v in disk.snapshot().items() if k.startswith("outside")}

    report = delete_files(op)
    assert report.deleted == ["old-1.tmp"] and report.freed_bytes == 3 * 1024 * 1024
    why = dict(line.split(": ", 1) for line in report.left_alone)
    assert "symlink" in why["sub/old-3.tmp"] and "symlink" in why["old-2.tmp"]
    assert {k: v for k, v in disk.snapshot().items() if k.startswith("outside")} == outside
    assert (disk.outside / "sub" / "old-3.tmp").exists() and (disk.outside / "secret.db").exists()


def test_a_file_changed_after_the_plan_is_left_alone(disk: DiskWorld) -> None:
    files = deletable_files(str(disk.tmp), 3600)
    op = DeleteFiles(purpose="temp", host="here", root=str(disk.tmp), min_age_seconds=3600, files=files)
    with open(disk.tmp / "old-1.tmp", "ab") as f:
        f.write(b"still in use")  # written to after the plan: younger and bigger now
    (disk.tmp / "old-2.tmp").unlink()
    (disk.tmp / "old-2.tmp").write_bytes(b"a new file under the old name")
    report = delete_files(op)
    assert report.deleted == ["sub/old-3.tmp"]
    assert (disk.tmp / "old-1.tmp").exists() and (disk.tmp / "old-2.tmp").read_bytes() == b"a new file under the old name"


def test_a_kill_for_another_start_time_is_refused_and_the_process_lives(tmp_path: Path) -> None:
    procs = Processes()
    try:
        child = procs.start("victim", step=1024, cap=0)
        info = read_process(child.pid)
        assert info is not None
        # The plan's process started at another tick: this PID is someone else now.
        reused = KillProcess(host="here", pid=child.pid, start_time=info.start_time - 1, boot_id=boot_id(),
                             command=info.command, rss_bytes=info.rss_bytes, grace_seconds=1)
        with pytest.raises(DriftError, match="not the approved process"):
            kill_process(reused)
        assert child.poll() is None
        other_boot = reused.model_copy(update={"start_time": info.start_time, "boot_id": "another-boot"})
        with pytest.raises(DriftError):
            kill_process(other_boot)
        assert child.poll() is None

        right = reused.model_copy(update={"start_time": info.start_time})
        assert kill_process(right).signal == "SIGTERM"
        assert child.wait(timeout=30) == -15
    finally:
        procs.stop()
