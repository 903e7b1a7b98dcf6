"""The host's filesystems: usage, the largest directories and files, temp and cache files,
and deleting exactly the files an approved plan lists.

Scanning (`scan_tree`) walks one filesystem (like `du -x`) with directory file descriptors:
`os.scandir(fd)` and one `fstatat` per entry (`st_blocks`, never following a symlink), so
no path is resolved twice. `bench/scan.py` compares it with `du` on a million files.

Deleting (`delete_files`) never leaves the approved root and never follows a symlink: it
opens the root with O_NOFOLLOW, then each directory below it relative to its parent
(`openat(..., O_NOFOLLOW | O_DIRECTORY)`), on the root's filesystem only; it looks at each
file with `fstatat(AT_SYMLINK_NOFOLLOW)` just before it unlinks it relative to that
directory (`unlinkat`), and only if it is still the regular file the plan saw (same inode,
device, size and mtime, one link, still old enough). Anything else is left as it is and
reported. What remains possible: a file replaced between that check and the unlink (a
window of one system call) inside the same allow-listed directory.
"""

from __future__ import annotations

import errno
import heapq
import os
import stat
import time
from typing import Iterator

from prefect.logging.loggers import get_logger
from pydantic import BaseModel, Field

from sevflow.errors import DriftError, PreflightError
from sevflow.models import (
    CacheCommand,
    DeleteFiles,
    FileEntry,
    FilesystemUsage,
    HostSpec,
    SizedPath,
    TreeScan,
)
from sevflow.tasks.common import step

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 256  # deeper trees are reported as unreadable below this depth


def _logger():  # noqa: ANN202 - a logger or a run logger adapter
    from prefect.exceptions import MissingContextError
    from prefect.logging.loggers import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.tasks.filesystem")


# --- usage -------------------------------------------------------------------------------


def filesystem_usage(mount: str) -> FilesystemUsage:
    """`df` for one mount point (what an unprivileged user can still write: `available`)."""
    try:
        st = os.statvfs(mount)
    except OSError as exc:
        raise PreflightError(f"Cannot read the usage of {mount!r}: {exc.strerror}. Fix `filesystems` "
                             "in the host target block.") from exc
    total = st.f_blocks * st.f_frsize
    available = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    usable = used + available
    inodes = st.f_files
    return FilesystemUsage(
        mount=mount, total_bytes=total, used_bytes=used, available_bytes=available,
        used_percent=round(100.0 * used / usable, 2) if usable else 0.0,
        inodes_used_percent=round(100.0 * (inodes - st.f_ffree) / inodes, 2) if inodes else 0.0,
    )


# --- scanning ----------------------------------------------------------------------------


def scan_tree(root: str, top_n: int = 10, recent_since_ns: int | None = None) -> TreeScan:
    """The largest directories (cumulative bytes on disk, like `du -x`) and files under
    `root`, on root's filesystem, symlinks never followed, hard links counted once; and the
    bytes of files modified since `recent_since_ns` (recent growth)."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PreflightError(f"Cannot scan {root!r}: {exc.strerror}. Fix `scan_roots` in the host target block.") from exc
    root_st = os.fstat(root_fd)
    dev = root_st.st_dev
    seen: set[tuple[int, int]] = set()
    dirs: list[tuple[int, str]] = []
    files: list[tuple[int, str]] = []
    recent: list[tuple[int, str]] = []
    counts = [0, 0, 0, 0]  # files, directories, unreadable, recent bytes
    since = recent_since_ns if recent_since_ns is not None else 1 << 62
    isdir = stat.S_ISDIR
    push = heapq.heappushpop

    def walk(fd: int, path: str, depth: int, own: int) -> int:
        total = own
        subdirs: list[tuple[str, int]] = []
        file_floor = files[0][0] if len(files) >= top_n else -1
        recent_floor = recent[0][0] if len(recent) >= top_n else -1
        recent_bytes = 0
        nfiles = 0
        try:
            entries = os.scandir(fd)
        except OSError:
            counts[2] += 1
            return total
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                size = st.st_blocks * 512
                if isdir(st.st_mode):
                    if st.st_dev == dev:
                        subdirs.append((entry.name, size))
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                nfiles += 1
                total += size
                if size > file_floor:
                    item = (size, f"{path}/{entry.name}")
                    if len(files) < top_n:
                        heapq.heappush(files, item)
                    else:
                        push(files, item)
                    file_floor = files[0][0] if len(files) >= top_n else -1
                if st.st_mtime_ns >= since:
                    recent_bytes += size
                    if size > recent_floor:
                        item = (size, f"{path}/{entry.name}")
                        if len(recent) < top_n:
                            heapq.heappush(recent, item)
                        else:
                            push(recent, item)
                        recent_floor = recent[0][0] if len(recent) >= top_n else -1
        counts[0] += nfiles
        counts[3] += recent_bytes
        for name, size in subdirs:
            if depth >= _MAX_DEPTH:
                counts[2] += 1
                continue
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                counts[2] += 1
                continue
            try:
                total += walk(sub, f"{path}/{name}", depth + 1, size)
            finally:
                os.close(sub)
        counts[1] += 1
        item = (total, path)
        if len(dirs) < top_n:
            heapq.heappush(dirs, item)
        elif total > dirs[0][0]:
            push(dirs, item)
        return total

    try:
        total = walk(root_fd, root.rstrip("/"), 0, root_st.st_blocks * 512)
    finally:
        os.close(root_fd)

    def top(items: list[tuple[int, str]]) -> list[SizedPath]:
        return [SizedPath(path=p, bytes=b) for b, p in sorted(items, reverse=True)]

    return TreeScan(root=root, total_bytes=total, files=counts[0], directories=counts[1],
                    largest_directories=[SizedPath(path=d.path or "/", bytes=d.bytes) for d in top(dirs)], largest_files=top(files), recent_bytes=counts[3],
                    recent_files=top(recent), unreadable=counts[2])


@step("find the largest directories and files", timeline=False)
def find_largest(spec: HostSpec) -> list[TreeScan]:
    """Scan every configured root (read-only)."""
    since = time.time_ns() - int(spec.growth_window_seconds * 1e9)
    scans = []
    for root in spec.scan_roots:
        started = time.monotonic()
        scan = scan_tree(root, spec.top_n, since)
        _logger().info("Scanned %s: %d files, %d directories, %d bytes in %.2f s", root, scan.files,
                       scan.directories, scan.total_bytes, time.monotonic() - started)
        scans.append(scan)
    return scans


@step("measure filesystem usage", timeline=False)
def measure_filesystems(spec: HostSpec, when: str) -> list[FilesystemUsage]:
    """`df` of every configured filesystem (read-only); `when` tells before from after."""
    return [filesystem_usage(m) for m in spec.filesystems]


# --- candidates for deletion -------------------------------------------------------------


def _walk_files(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every regular file under `root`, walked by dir fds without
    following any symlink and without leaving root's filesystem."""
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise PreflightError(f"Cannot open {root!r} (it must be a real directory, not a symlink): "
                             f"{exc.strerror}. Fix the host target block.") from exc
    dev = os.fstat(root_fd).st_dev

    def walk(fd: int, rel: str, depth: int) -> Iterator[tuple[str, os.stat_result]]:
        subdirs = []
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                path = f"{rel}{entry.name}"
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev == dev and depth < _MAX_DEPTH:
                        subdirs.append(entry.name)
                elif stat.S_ISREG(st.st_mode):  # symlinks, sockets, fifos: never candidates
                    yield path, st
        for name in subdirs:
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                if os.fstat(sub).st_dev == dev:
                    yield from walk(sub, f"{rel}{name}/", depth + 1)
            finally:
                os.close(sub)

    try:
        yield from walk(root_fd, "", 0)
    finally:
        os.close(root_fd)


def deletable_files(root: str, min_age_seconds: float, now_ns: int | None = None) -> list[FileEntry]:
    """Regular files under `root` unmodified for `min_age_seconds`, with one link (deleting a
    name of a file with more links frees nothing), largest first."""
    now_ns = now_ns if now_ns is not None else time.time_ns()
    cutoff = now_ns - int(min_age_seconds * 1e9)
    found = [
        FileEntry(path=rel, size=st.st_size, freed_bytes=st.st_blocks * 512, inode=st.st_ino, device=st.st_dev,
                  mtime_ns=st.st_mtime_ns)
        for rel, st in _walk_files(root)
        if st.st_nlink == 1 and st.st_mtime_ns <= cutoff
    ]
    return sorted(found, key=lambda f: (-f.freed_bytes, f.path))


class FolderFiles(BaseModel):
    root: str
    files: list[FileEntry]


@step("find old temp files", timeline=False)
def find_temp_files(spec: HostSpec) -> list[FolderFiles]:
    """Files older than the block's minimum age in each allow-listed temp folder (read-only)."""
    return [FolderFiles(root=root, files=deletable_files(root, spec.temp_min_age_seconds))
            for root in spec.temp_allow_list]


@step("measure caches", timeline=False)
def find_cache_files(spec: HostSpec) -> tuple[list[FolderFiles], dict[str, int]]:
    """Every file of each cache folder, and the bytes each cache command's folder holds (read-only)."""
    folders = [FolderFiles(root=root, files=deletable_files(root, 0)) for root in spec.cache_folders]
    measured: dict[str, int] = {}
    for command in spec.cache_commands:
        try:
            measured[command.name] = sum(st.st_blocks * 512 for _, st in _walk_files(command.path))
        except PreflightError:
            measured[command.name] = 0
    return folders, measured


# --- deleting ----------------------------------------------------------------------------


class DeletionReport(BaseModel):
    """What a deletion did: the files it deleted, what it freed, and what it left alone and why."""

    root: str
    purpose: str
    deleted: list[str] = Field(default_factory=list)
    freed_bytes: int = 0
    left_alone: list[str] = Field(default_factory=list, description="'path: why' for each file not deleted")


def _safe_parts(path: str) -> list[str] | None:
    parts = path.split("/")
    if not parts or any(p in ("", ".", "..") for p in parts) or path.startswith("/"):
        return None
    return parts


@step("delete files", mutating=True)
def delete_files(op: DeleteFiles) -> DeletionReport:
    """Delete exactly the approved plan's files (see the module docstring for how)."""
    log = _logger()
    report = DeletionReport(root=op.root, purpose=op.purpose)
    try:
        root_fd = os.open(op.root, _DIR_FLAGS)
    except OSError as exc:
        raise DriftError(f"Nothing was deleted: {op.root!r} cannot be opened as a real directory any more "
                         f"({exc.strerror}).") from exc
    root_dev = os.fstat(root_fd).st_dev
    cutoff = time.time_ns() - int(op.min_age_seconds * 1e9)
    by_dir: dict[tuple[str, ...], list[tuple[str, FileEntry]]] = {}
    for f in op.files:
        parts = _safe_parts(f.path)
        if parts is None:
            report.left_alone.append(f"{f.path}: not a plain path below the root")
            continue
        by_dir.setdefault(tuple(parts[:-1]), []).append((parts[-1], f))
    try:
        for dirs, entries in sorted(by_dir.items()):
            opened: list[int] = []
            try:
                fd = root_fd
                try:
                    for comp in dirs:
                        fd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                        opened.append(fd)
                        if os.fstat(fd).st_dev != root_dev:
                            raise OSError(0, "another filesystem is mounted there")
                except OSError as exc:
                    why = ("a symlink or not a directory now" if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                           else exc.strerror)
                    report.left_alone += [f"{f.path}: its folder {'/'.join(dirs)} is {why}" for _, f in entries]
                    continue
                for name, f in entries:
                    why = _check_and_unlink(fd, name, f, cutoff)
                    if why:
                        report.left_alone.append(f"{f.path}: {why}")
                    else:
                        report.deleted.append(f.path)
                        report.freed_bytes += f.freed_bytes
            finally:
                for o in opened:
                    os.close(o)
    finally:
        os.close(root_fd)
    log.info("Deleted %d %s file(s) under %s, freed %d bytes; left alone %d", len(report.deleted), op.purpose,
             op.root, report.freed_bytes, len(report.left_alone))
    for line in report.left_alone[:20]:
        log.warning("Left alone: %s", line)
    return report


def _check_and_unlink(dir_fd: int, name: str, f: FileEntry, cutoff_ns: int) -> str | None:
    """Unlink `name` in `dir_fd` if it is still the planned file; else say why not."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return "already gone"
    except OSError as exc:
        return exc.strerror or "cannot be read"
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file (a symlink or something else now)"
    if (st.st_ino, st.st_dev) != (f.inode, f.device):
        return "replaced by another file since the plan"
    if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
        return "changed since the plan (size or mtime)"
    if st.st_nlink != 1:
        return "has other hard links now"
    if st.st_mtime_ns > cutoff_ns:
        return "modified too recently"
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return "already gone"
    except OSError as exc:
        return exc.strerror or "could not be deleted"
    return None


@step("clear cache (command)", mutating=True)
def run_cache_command(op: CacheCommand) -> int:
    """Run the approved cache command, once sure the host block it came from is unchanged.
    Returns how many bytes its folder holds afterwards."""
    from pathlib import Path

    from sevflow.blocks.host import HostTarget
    from sevflow.tasks.host import run_command

    try:
        live = HostTarget.load(op.block).spec(op.block)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise DriftError(f"The cache command {op.name!r} was not run: the host block {op.block!r} was deleted.") from exc
    if live.fingerprint() != op.target_fingerprint:
        raise DriftError(f"The cache command {op.name!r} was not run: the host block {op.block!r} changed since "
                         "the plan was approved. Run the procedure again to review the new plan.")
    run_command("cache", op.command, Path("/"), {}, [], op.timeout_seconds, op.host)  # type: ignore[arg-type]
    try:
        return sum(st.st_blocks * 512 for _, st in _walk_files(op.path))
    except PreflightError:
        return 0
