"""The host's processes and memory, read from /proc; stopping one approved process.

A process is named by its PID *and* its start time (clock ticks after boot, field 22 of
/proc/<pid>/stat) and the boot id: a PID reused by another process after the plan was made
has another start time, and is refused. The kill itself goes through a pidfd opened before
the start time is checked again, so the signal reaches the checked process or none.
"""

from __future__ import annotations

import os
import select
import signal
import time
from fnmatch import fnmatchcase

from prefect.logging.loggers import get_logger
from pydantic import BaseModel

from sevflow.errors import DriftError
from sevflow.models import HostSpec, KillProcess, MemoryTrend, MemoryUsage, ProcessInfo
from sevflow.tasks.common import step

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _logger():  # noqa: ANN202
    from prefect.exceptions import MissingContextError
    from prefect.logging.loggers import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.tasks.processes")


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def read_process(pid: int, boot: str | None = None) -> ProcessInfo | None:
    """The process `pid` now, or None if there is none (or it is a kernel thread)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
        uid = os.stat(f"/proc/{pid}").st_uid
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    if not cmdline or len(fields) < 22:
        return None  # kernel threads have no command line and no memory of their own
    return ProcessInfo(pid=pid, start_time=int(fields[19]), boot_id=boot or boot_id(), command=cmdline,
                       rss_bytes=int(fields[21]) * _PAGE, uid=uid)


def list_processes() -> list[ProcessInfo]:
    boot = boot_id()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_process(int(name), boot)
            if info is not None:
                found.append(info)
    return found


def memory_usage() -> MemoryUsage:
    values: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    total, available = values["MemTotal"], values.get("MemAvailable", values["MemFree"])
    return MemoryUsage(total_bytes=total, available_bytes=available,
                       used_percent=round(100.0 * (total - available) / total, 2) if total else 0.0)


def killable(spec: HostSpec, process: ProcessInfo) -> bool:
    """Whether the block lets this process be proposed for killing: its command line matches a
    `kill_candidates` glob, and it is not sevflow itself, its parent or PID 1."""
    if process.pid in (1, os.getpid(), os.getppid()):
        return False
    return any(fnmatchcase(process.command, pattern) for pattern in spec.kill_candidates)


class MemoryFacts(BaseModel):
    memory: MemoryUsage
    top_processes: list[ProcessInfo]
    trends: list[MemoryTrend]
    killable: list[int]


@step("find the processes using the most memory", timeline=False)
def find_memory_hogs(spec: HostSpec) -> MemoryFacts:
    """The largest processes, and for the largest and every killable one, whether its memory
    grows over the block's short window (leak or legitimate). Read-only; it waits for the window."""
    from sevflow.plans import judge_memory_trend

    processes = sorted(list_processes(), key=lambda p: p.rss_bytes, reverse=True)
    top = processes[: spec.top_n]
    watched = {p.pid: p for p in top[:3]}
    watched.update({p.pid: p for p in processes if killable(spec, p) and p.rss_bytes >= spec.kill_min_rss_bytes})
    samples: dict[int, list[int]] = {pid: [p.rss_bytes] for pid, p in watched.items()}
    gone: set[int] = set()
    pause = spec.leak_window_seconds / (spec.leak_samples - 1)
    for _ in range(spec.leak_samples - 1):
        time.sleep(pause)
        for pid, p in watched.items():
            now = read_process(pid, p.boot_id)
            if now is None or now.start_time != p.start_time:
                gone.add(pid)
            elif pid not in gone:
                samples[pid].append(now.rss_bytes)
    trends = [
        MemoryTrend(process=p, samples=samples[pid], window_seconds=spec.leak_window_seconds,
                    verdict="exited" if pid in gone else judge_memory_trend(samples[pid], spec.leak_min_growth_bytes))
        for pid, p in watched.items()
    ]
    for t in trends:
        _logger().info("Memory: %s", t.sentence())
    return MemoryFacts(memory=memory_usage(), top_processes=top, trends=trends,
                       killable=sorted(pid for pid, p in watched.items() if killable(spec, p)))


class KillReport(BaseModel):
    pid: int
    command: str
    signal: str
    freed_rss_bytes: int


@step("kill the memory hog", mutating=True)
def kill_process(op: KillProcess) -> KillReport:
    """Stop the approved process: SIGTERM, then SIGKILL after the grace period. Refused (and
    nothing is signalled) if the PID now belongs to another process or is gone."""
    log = _logger()
    try:
        pidfd = os.pidfd_open(op.pid)
    except ProcessLookupError as exc:
        raise DriftError(f"pid {op.pid} is gone: nothing was killed (it exited since the plan).") from exc
    try:
        # Checked after the pidfd pins the process: a signal through it reaches this one only.
        now = read_process(op.pid)
        if now is None or now.start_time != op.start_time or now.boot_id != op.boot_id:
            raise DriftError(
                f"pid {op.pid} is not the approved process any more (started at tick "
                f"{now.start_time if now else '?'}, the plan's started at {op.start_time}): the PID was reused "
                "or the process exited. Nothing was killed; run the procedure again for a fresh plan."
            )
        log.warning("Sending SIGTERM to pid %d (%s), RSS %d bytes", op.pid, op.command[:120], now.rss_bytes)
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        sent = "SIGTERM"
        if not _exits_within(pidfd, op.grace_seconds):
            log.warning("pid %d still running after %g s: SIGKILL", op.pid, op.grace_seconds)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                sent = "SIGKILL"
            except ProcessLookupError:
                pass
            _exits_within(pidfd, 30.0)
    finally:
        os.close(pidfd)
    return KillReport(pid=op.pid, command=op.command, signal=sent, freed_rss_bytes=now.rss_bytes)


def _exits_within(pidfd: int, seconds: float) -> bool:
    """A pidfd turns readable when its process has exited."""
    readable, _, _ = select.select([pidfd], [], [], seconds)
    return bool(readable)
