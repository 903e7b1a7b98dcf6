"""The watchdog of `sevflow up`: stops its children when `sevflow up` dies, however it dies.

`sevflow up` starts this process in a session of its own and keeps the write end of a pipe to
its standard input, telling it `+<pid>` for each child it starts (each child leads its own
process group) and `-<pid>` for each it has stopped itself. Only `sevflow up` holds that end,
so end-of-file here means `sevflow up` is gone, also by SIGKILL, which no handler can catch:
the children still listed are stopped, so no orphaned server or worker keeps the port.

Standard library only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_groups(leaders: list[int], grace: float, reap: object = None) -> None:
    """SIGTERM each group's leader only, so it stops in its own way (a runner lets its flow runs
    finish or cancels them; they are not signalled behind its back), wait up to `grace` seconds
    for all of them, then SIGKILL whatever is left in their process groups.

    `reap(pid) -> bool` tells whether a leader has exited, for a caller that is its parent.
    """
    is_gone = reap if callable(reap) else (lambda pid: not _alive(pid))
    for pid in leaders:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not all(is_gone(pid) for pid in leaders):
        time.sleep(0.1)
    for pid in leaders:
        try:
            os.killpg(pid, signal.SIGKILL)  # stragglers: a forkserver, a flow run, a server's workers
        except (ProcessLookupError, PermissionError):
            pass


def main() -> None:
    # A closed terminal or Ctrl-C reaches `sevflow up`, which stops its children itself; this
    # process only acts when `sevflow up` could not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    grace = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
    leaders: list[int] = []
    for line in sys.stdin:
        op, _, pid = line.strip().partition(" ")
        if op == "+":
            leaders.append(int(pid))
        elif op == "-" and int(pid) in leaders:
            leaders.remove(int(pid))
    if leaders:
        print(f"sevflow up is gone; stopping its processes {leaders}", file=sys.stderr, flush=True)
        stop_groups(leaders, grace)


if __name__ == "__main__":
    main()
