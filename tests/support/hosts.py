"""A host for the Memory/Disk Full tests: a small filesystem of its own (a tmpfs mounted in
the test's folder where the machine allows it, else a plain folder), the files a full disk
holds, and real processes, one of which keeps growing its memory."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from tests.support.wait import until

MiB = 1024 * 1024
HOUR_NS = 3600 * 10**9

# A process that grows by `step` bytes (touched, so resident) every 50 ms up to `cap`, or holds
# `step` bytes and stays steady when cap == 0. argv[1] is a marker the host block's globs match.
_HOG = r"""
import sys, time
marker, step, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = [b"\x01" * step]
print("ready", flush=True)
while True:
    if cap and len(held) * step < cap:
        held.append(b"\x01" * step)
    time.sleep(0.05)
"""


def mount_small_filesystem(path: Path, size_mb: int = 64) -> bool:
    """Mount a tmpfs of its own at `path` if this machine lets us (root); else leave a folder."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "sevflow-test", str(path)],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _write(path: Path, size: int, age_ns: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    if age_ns:
        t = time.time_ns() - age_ns
        os.utime(path, ns=(t, t))


class DiskWorld:
    """The files of a full disk under `root`: data (never deletable), caches, an allow-listed temp
    folder with old and fresh files, hard links and symlinks pointing out of it, and an
    `outside` folder on the same filesystem that must never be touched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data, self.tmp, self.cache = root / "data", root / "tmp", root / "cache"
        self.cmdcache, self.outside = root / "cmdcache", root / "outside"
        old = 2 * HOUR_NS
        _write(self.data / "big.bin", 6 * MiB, old)
        _write(self.data / "logs" / "app.log", 2 * MiB)
        _write(self.tmp / "old-1.tmp", 3 * MiB, old)
        _write(self.tmp / "old-2.tmp", 1 * MiB, old)
        _write(self.tmp / "sub" / "old-3.tmp", 1 * MiB, old)
        _write(self.tmp / "fresh.tmp", 1 * MiB)  # too young: stays
        _write(self.tmp / "hard.tmp", 512 * 1024, old)
        os.link(self.tmp / "hard.tmp", self.data / "hard-copy")  # two links: deleting frees nothing, stays
        _write(self.outside / "old-outside.tmp", 2 * MiB, old)
        _write(self.outside / "secret.db", 1 * MiB, old)
        os.symlink(self.outside, self.tmp / "escape")  # a folder out of the allow-list
        os.symlink(self.outside / "secret.db", self.tmp / "old-link.tmp")  # a file out of it
        for link in (self.tmp / "escape", self.tmp / "old-link.tmp"):
            t = time.time_ns() - old
            os.utime(link, ns=(t, t), follow_symlinks=False)
        _write(self.cache / "c1.bin", 2 * MiB)
        _write(self.cache / "nested" / "c2.bin", 1 * MiB)
        _write(self.cmdcache / "x.bin", 1 * MiB)

    def snapshot(self) -> dict[str, Any]:
        """Every entry under the root: kind, inode, size, mtime, content digest, symlink target."""
        out: dict[str, Any] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for name in [*dirnames, *filenames]:
                p = Path(dirpath) / name
                st = p.lstat()
                entry: dict[str, Any] = {"mode": st.st_mode, "ino": st.st_ino, "size": st.st_size,
                                         "mtime": st.st_mtime_ns, "nlink": st.st_nlink}
                if p.is_symlink():
                    entry["target"] = os.readlink(p)
                elif p.is_file():
                    entry["sha"] = hashlib.sha256(p.read_bytes()).hexdigest()
                out[str(p.relative_to(self.root))] = entry
        return out

    def expected_freed(self) -> set[str]:
        """What an approved run deletes: the caches and the old single-link temp files, nothing else."""
        return {"cache/c1.bin", "cache/nested/c2.bin", "cmdcache/x.bin", "tmp/old-1.tmp", "tmp/old-2.tmp",
                "tmp/sub/old-3.tmp"}


class Processes:
    """Real child processes whose command lines carry one marker."""

    def __init__(self) -> None:
        self.marker = f"sevflow-memhog-{uuid.uuid4().hex[:8]}"
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, step: int, cap: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", _HOG, f"{self.marker}-{name}", str(step), str(cap)],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        self.children[name] = proc
        return proc

    def snapshot(self) -> dict[str, Any]:
        """Each child: pid, start time, alive; and every process on the machine carrying the marker."""
        children = {name: (p.pid, _start_time(p.pid), p.poll() is None) for name, p in self.children.items()}
        marked = sorted(int(d) for d in os.listdir("/proc") if d.isdigit() and self.marker.encode() in _cmdline(d))
        return {"children": children, "marked": marked}

    def stop(self) -> None:
        for p in self.children.values():
            if p.poll() is None:
                p.kill()
            p.wait()


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _start_time(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2:].split()[19])


def rss(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rfind(")") + 2:].split()[21]) * os.sysconf("SC_PAGE_SIZE")


def save_host_target(name: str, world: DiskWorld, procs: Processes, rules_dir: Path | None, **overrides: Any) -> None:
    from sevflow.blocks import HostTarget
    from sevflow.models import CacheCommandSpec

    fields: dict[str, Any] = dict(
        host=socket.gethostname(), filesystems=[str(world.root)], scan_roots=[str(world.root)], top_n=5,
        growth_window_seconds=600, cache_folders=[str(world.cache)],
        cache_commands=[CacheCommandSpec(name="app cache", command=f"rm -f {world.cmdcache}/*.bin",
                                         path=str(world.cmdcache))],
        temp_allow_list=[str(world.tmp)], temp_min_age_seconds=3600, disk_threshold_percent=20,
        kill_candidates=[f"*{procs.marker}*"], kill_min_rss_bytes=30 * MiB, kill_grace_seconds=5,
        leak_window_seconds=1.0, leak_samples=4, leak_min_growth_bytes=2 * MiB, cleanup_interval_seconds=3600,
        prometheus_rules_dir=str(rules_dir) if rules_dir else None,
    )
    fields.update(overrides)
    HostTarget(**fields).save(name, overwrite=True)


def prevention_in_place(block: str) -> dict[str, Any]:
    """The automation and the cleanup schedule a run for host target `block` would create."""
    from prefect.client.orchestration import get_client

    from sevflow import plans
    from sevflow.blocks import HostTarget

    spec = HostTarget.load(block).spec(block)  # type: ignore[attr-defined]
    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name(plans.automation_name(spec))
        dep = client.read_deployment_by_name(plans.MONITORING_DEPLOYMENT)
        schedules = [s for s in client.read_deployment_schedules(dep.id) if s.slug == plans.cleanup_slug(spec)]
    return {"automations": automations, "schedules": schedules}


def remove_prevention(block: str) -> None:
    from prefect.client.orchestration import get_client

    found = prevention_in_place(block)
    with get_client(sync_client=True) as client:
        for a in found["automations"]:
            client.delete_automation(a.id)
        for s in found["schedules"]:
            client.delete_deployment_schedule(s.deployment_id, s.id)


def wait_grows(pid: int, by: int) -> None:
    first = rss(pid)
    until(lambda: rss(pid) - first >= by, timeout=30, interval=0.05, what=f"pid {pid} to grow by {by} bytes")


def host_fixture(tmp_path: Path) -> Iterator[tuple[DiskWorld, Processes]]:
    mount = tmp_path / "fs"
    mounted = mount_small_filesystem(mount)
    procs = Processes()
    try:
        world = DiskWorld(mount)
        procs.start("hog", step=1 * MiB, cap=2048 * MiB)
        procs.start("steady", step=40 * MiB, cap=0)
        wait_grows(procs.children["hog"].pid, 40 * MiB)
        yield world, procs
    finally:
        procs.stop()
        if mounted:
            unmount(mount)
