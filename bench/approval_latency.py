"""How long after an approval does the change start, with sevflow, against bare Prefect?

    python bench/approval_latency.py [--runs N] [--warmup W] [--keep] [--raw]

On demand only (not a test). Everything runs on this machine, loopback only: a Prefect server
on its own fresh PostgreSQL database (tests.support.stack.PrefectServer, dropped at the end)
and four serving processes, measured in the same session, round-robin, one run at a time:

  baseline (spawn)  bench.baseline's flow: suspend with typed input; after the resume one task
                    writes a timestamp (the "change"). Served by a plain prefect Runner,
                    query_seconds=0.5, runs started by Prefect's plain spawn.
  baseline (fast)   the same flow and Runner, with sevflow.worker.install_fast_start() called
                    in the runner process: isolates the spawn-vs-forkserver effect.
  sevflow           `sevflow serve` running application-rollback on a real temporary git repo
                    (tests.support.repos) and a local HealthApp, approved with
                    sevflow.gate.answer_gate.
  sevflow worker    the same, on the `sevflow` work pool: `sevflow worker` (Prefect's process
                    worker with sevflow's fast start, poll 0.2 s) pulling from queue sev-1, the
                    deployments registered by sevflow.deployments.deploy (as `sevflow deploy`,
                    under the deployment name `pool` so both kinds live on one server).

Per run it records (wall clock, all processes on this machine):

  start → at gate         run_deployment called → the run's Paused state
  approval → change       resume POST sent → baseline: the task's timestamp; sevflow: the
                          rollback commit landing on the branch (mtime of .git/refs/heads/main,
                          written by the `git checkout <commit-hash>` step's fast-forward)
  approval → build        sevflow only: resume POST sent → the build command's first line
                          (`date +%s.%N > build_started`)
  approval → completed    resume POST sent → the run's Completed state
  whole run               run_deployment called → the run's Completed state

The bench reacts to a pause by polling every 50 ms, so "whole run" includes that reaction
(shown separately as "gate → approval").
"""

from __future__ import annotations

import argparse
import re
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script (`python bench/approval_latency.py`): make `bench` and `tests` importable.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import httpx  # noqa: E402

from tests.support.repos import BUILD, git, make_service_repo, save_service_target  # noqa: E402
from tests.support.services import HealthApp  # noqa: E402
from tests.support.stack import PoolWorker, PrefectServer, Worker  # noqa: E402

POLL_SECONDS = 0.05  # how often the bench looks at a run's state
WAIT_SECONDS = 120.0  # longest any one wait may take before the bench gives up
APPROVER = "alice"
DEPLOY_TOKEN = "bench-dpl-tok"
HEALTH_TOKEN = "bench-hc-tok"


# --- measurements -------------------------------------------------------------------------


@dataclass
class Sample:
    """One run, in seconds."""

    to_gate: float
    gate_to_approval: float
    approval_to_change: float
    approval_to_completed: float
    whole: float
    approval_to_build: float | None = None


METRICS: list[tuple[str, str]] = [
    ("start → at gate", "to_gate"),
    ("approval → change", "approval_to_change"),
    ("approval → build (sevflow)", "approval_to_build"),
    ("approval → completed", "approval_to_completed"),
    ("whole run (start → completed)", "whole"),
    ("gate → approval (bench reaction)", "gate_to_approval"),
]


@dataclass
class Config:
    title: str
    run_once: Callable[[int], Sample]
    samples: list[Sample] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@contextmanager
def resume_clock() -> Iterator[list[float]]:
    """Collects the wall-clock times at which this process sends POST /flow_runs/{id}/resume.

    Instrumentation, not a seam: answer_gate reads the run before it resumes and waits for
    the verdict after, so neither its start nor its return is the moment of approval.
    """
    from prefect.client.orchestration.base import BaseClient

    original = BaseClient.request
    sent: list[float] = []

    def request(self: Any, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "POST" and str(path).endswith("/resume"):
            sent.append(time.time())
        return original(self, method, path, *args, **kwargs)  # type: ignore[arg-type]

    BaseClient.request = request  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        BaseClient.request = original  # type: ignore[method-assign]


# --- driving runs through the API -----------------------------------------------------------


def wait_state(run_id: uuid.UUID, done: Callable[[Any], bool], what: str) -> Any:
    """Poll until `done(run)`; raise with the run's state if it ends otherwise or takes too long."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + WAIT_SECONDS
    # One client for the whole wait: opening one per poll would slow the bench's reaction.
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and done(run):
                return run
            state = run.state
            if (state is not None and state.is_final()) or time.monotonic() > deadline:
                raise RuntimeError(
                    f"flow run {run_id} never {what}: {state.type.value if state else None} "
                    f"{state.name if state else ''} {state.message if state else ''}"
                )
            time.sleep(POLL_SECONDS)


def is_paused(run: Any) -> bool:
    return run.state.type.value == "PAUSED"


def is_completed(run: Any) -> bool:
    return run.state.type.value == "COMPLETED"


def start_run(deployment: str, parameters: dict[str, Any], queue: str | None = None) -> tuple[uuid.UUID, float]:
    from prefect.deployments import run_deployment

    started = time.time()
    run = run_deployment(deployment, parameters=parameters, timeout=0, work_queue_name=queue)
    return run.id, started


def wait_for_file(path: Path, what: str) -> float:
    """The float written in `path`, once it is there (it is written before the run completes)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return float(text)
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what}: {path} was never written")


# --- the three configurations -------------------------------------------------------------


class BaselineRunner:
    """bench.baseline.serve in its own process group, like tests.support.stack.Worker."""

    def __init__(self, env: dict[str, str], log_path: Path, deployment: str, fast_start: bool) -> None:
        self.env = env
        self.log_path = log_path
        self.deployment = deployment
        self.fast_start = fast_start
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        code = "import sys; from bench.baseline import serve; serve(sys.argv[1], sys.argv[2] == 'fast')"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, self.deployment, "fast" if self.fast_start else "spawn"],
                cwd=REPO_ROOT,
                env=dict(os.environ) | self.env | {"PYTHONPATH": str(REPO_ROOT)},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait_ready(self, api_url: str) -> None:
        from bench.baseline import FLOW_NAME

        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"baseline runner exited: see {self.log_path}")
            if httpx.get(f"{api_url}/deployments/name/{FLOW_NAME}/{self.deployment}", timeout=5).status_code == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"baseline runner did not register its deployment: see {self.log_path}")

    def stop(self) -> None:
        stop_group(self.process)


def stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process's group (runner, forkserver, flow run children), SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def flow_run_processes(groups: list[int]) -> list[int]:
    """Pids of live flow-run processes in these process groups (Linux /proc): children Prefect
    spawned (`--multiprocessing-fork`) or the forkserver forked."""
    table: dict[int, tuple[int, int, str, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # it exited while we looked
        state, ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        table[int(entry)] = (int(ppid), int(pgrp), state, cmdline)
    found = []
    for pid, (ppid, pgrp, state, cmdline) in table.items():
        if pgrp not in groups or state == "Z":
            continue
        parent = table.get(ppid, (0, 0, "", b""))[3]
        if b"--multiprocessing-fork" in cmdline or b"multiprocessing.forkserver" in parent:
            found.append(pid)
    return found


def settle(groups: list[int], timeout: float = 30.0) -> None:
    """Wait until no flow-run process is left: a finished run's process still exiting would
    take CPU from the next run measured, and stopping a server kills it mid-exit."""
    deadline = time.monotonic() + timeout
    while (left := flow_run_processes(groups)) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if left:
        print(f"  note: flow-run processes {left} still running after {timeout:g} s", flush=True)


def baseline_run(root: Path, deployment: str) -> Callable[[int], Sample]:
    from prefect.client.orchestration import get_client

    from bench.baseline import FLOW_NAME

    def run_once(i: int) -> Sample:
        stamp = root / f"{deployment}-{i}.stamp"
        run_id, started = start_run(f"{FLOW_NAME}/{deployment}", {"stamp_path": str(stamp)})
        paused = wait_state(run_id, is_paused, "paused")
        with resume_clock() as sent, get_client(sync_client=True) as client:
            response = client.request(
                "POST", "/flow_runs/{id}/resume", path_params={"id": str(run_id)},
                json={"run_input": {"decision": "approve", "approver": APPROVER, "reason": "bench"}},
            )
        body = response.json()
        if body.get("status") != "ACCEPT":
            raise RuntimeError(f"resume of {run_id} refused: {body}")
        approved = sent[0]
        final = wait_state(run_id, is_completed, "completed")
        changed = wait_for_file(stamp, f"baseline run {run_id}")
        return Sample(
            to_gate=paused.state.timestamp.timestamp() - started,
            gate_to_approval=approved - paused.state.timestamp.timestamp(),
            approval_to_change=changed - approved,
            approval_to_completed=final.state.timestamp.timestamp() - approved,
            whole=final.state.timestamp.timestamp() - started,
        )

    return run_once


class BenchService:
    """One production service for one rollback: a real repo at v3 (broken), its health app and
    its target block (as tests/conftest.py's Service, plus a build-start timestamp)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.name = f"bench-shop-{uuid.uuid4().hex[:8]}"
        self.repo = make_service_repo(root)
        self.app = HealthApp(self.repo.deploy_dir)
        self.build_started = root / "build_started"
        save_service_target(self.name, self.repo, self.app.health_url, deploy_token=DEPLOY_TOKEN,
                            health_token=HEALTH_TOKEN, build_command=f"date +%s.%N > {self.build_started} && {BUILD}")

    def branch_moved_at(self) -> float:
        # The fast-forward rewrites the loose ref file; nothing after it in the run touches it.
        return os.stat(self.repo.path / ".git" / "refs" / "heads" / "main").st_mtime_ns / 1e9

    def check_rolled_back(self, run_id: uuid.UUID) -> None:
        """The run did what it claims: v2's tree as a new commit on top of v3, deployed."""
        v2_tree = git(self.repo.path, "rev-parse", f"{self.repo.commits['v2']}^{{tree}}")
        if (git(self.repo.path, "rev-parse", "HEAD^") != self.repo.commits["v3"]
                or git(self.repo.path, "rev-parse", "HEAD^{tree}") != v2_tree
                or self.app.deployed() != "version 2 healthy"):
            raise RuntimeError(f"sevflow run {run_id} completed but {self.repo.path} was not rolled back to v2")


def save_policy(name: str) -> None:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule

    ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=[APPROVER], required_approvals=1)]).save(
        name, overwrite=True)


def sevflow_run(root: Path, policy: str, deployment: str = "application-rollback/Rollback: Application",
                queue: str | None = None) -> Callable[[int], Sample]:
    from sevflow.gate import answer_gate

    def run_once(i: int) -> Sample:
        service = BenchService(root / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', deployment)}-{i}")  # a shell-safe folder
        try:
            run_id, started = start_run(
                deployment, {"service": service.name, "severity": "SEV-1", "policy": policy, "reason": "bench"},
                queue,
            )
            paused = wait_state(run_id, is_paused, "paused at the gate")
            with resume_clock() as sent:
                verdict = answer_gate(str(run_id), "approve", APPROVER, "bench", wait_seconds=WAIT_SECONDS)
            if "Approved" not in verdict:
                raise RuntimeError(f"sevflow run {run_id}: unexpected verdict {verdict!r}")
            approved = sent[0]
            final = wait_state(run_id, is_completed, "completed")
            service.check_rolled_back(run_id)
            built = wait_for_file(service.build_started, f"sevflow run {run_id}")
            return Sample(
                to_gate=paused.state.timestamp.timestamp() - started,
                gate_to_approval=approved - paused.state.timestamp.timestamp(),
                approval_to_change=service.branch_moved_at() - approved,
                approval_to_completed=final.state.timestamp.timestamp() - approved,
                whole=final.state.timestamp.timestamp() - started,
                approval_to_build=built - approved,
            )
        finally:
            service.app.close()

    return run_once


# --- report --------------------------------------------------------------------------------


def render(configs: list[Config], runs: int, warmup: int) -> str:
    from bench.baseline import QUERY_SECONDS
    spawn, fast, sev, pool = configs

    def values(config: Config, attr: str) -> list[float]:
        return [v for s in config.samples if (v := getattr(s, attr)) is not None]

    def cell(config: Config, attr: str) -> str:
        vs = values(config, attr)
        return f"{statistics.median(vs):6.2f} / {percentile(vs, 0.9):6.2f}" if vs else f"{'–':>6} / {'–':>6}"

    def ratio(a: Config, b: Config, attr: str) -> str:
        va, vb = values(a, attr), values(b, attr)
        if not va or not vb:
            return f"{'–':>5} / {'–':>5}"
        return (f"{statistics.median(va) / statistics.median(vb):5.2f} / "
                f"{percentile(va, 0.9) / percentile(vb, 0.9):5.2f}")

    width = max(len(name) for name, _ in METRICS)
    head = (f"{'seconds, median / p90':<{width}} | {spawn.title:^15} | {fast.title:^15} | {sev.title:^15} | "
            f"{pool.title:^15} | {'sevflow÷spawn':^13} | {'sevflow÷fast':^13} | {'fast÷spawn':^13} | "
            f"{'worker÷serve':^13}")
    lines = [
        f"approval latency: {runs} measured run(s) per configuration (+{warmup} warm-up each, not counted), "
        f"round-robin; every Runner polls each {QUERY_SECONDS:g} s",
        "",
        head,
        "-" * len(head),
    ]
    for name, attr in METRICS:
        lines.append(
            f"{name:<{width}} | {cell(spawn, attr):^15} | {cell(fast, attr):^15} | {cell(sev, attr):^15} | "
            f"{cell(pool, attr):^15} | {ratio(sev, spawn, attr):^13} | {ratio(sev, fast, attr):^13} | "
            f"{ratio(fast, spawn, attr):^13} | {ratio(pool, sev, attr):^13}"
        )
    lines += [
        "",
        "ratios: median ratio / p90 ratio. 'approval → change': baseline = its task's start, "
        "sevflow = the rollback commit on the branch.",
        "'sevflow' is `sevflow serve` (a Runner); 'sevflow worker' the work-pool worker; worker÷serve "
        "compares the two, measured in this same run.",
        "'approval' = the moment POST /flow_runs/{id}/resume is sent; warm-up runs (each serving "
        "process's first, which also starts the forkserver) are not counted.",
    ]
    return "\n".join(lines)


def render_raw(configs: list[Config]) -> str:
    lines = ["", "per run (approval → change, whole run), seconds:"]
    for c in configs:
        lines.append(f"  {c.title:<16} " + "  ".join(
            f"{s.approval_to_change:.2f},{s.whole:.2f}" for s in c.samples))
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM takes the same way out as Ctrl-C, so every `finally` below stops its process.
    raise KeyboardInterrupt


def measure(root: Path, runs: int, warmup: int) -> list[Config]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_UI_URL,
        temporary_settings,
    )

    with ExitStack() as stack:
        home = root / "prefect-home"
        home.mkdir()
        server = PrefectServer(home)
        stack.callback(server.stop)  # before start: a half-started server still drops its database
        print(f"starting Prefect server on 127.0.0.1:{server.port} (database {server.database}) ...", flush=True)
        server.start()
        env = server.env()
        stack.enter_context(temporary_settings(updates={
            PREFECT_API_URL: server.api_url,
            PREFECT_UI_URL: env["PREFECT_UI_URL"],
            PREFECT_LOCAL_STORAGE_PATH: env["PREFECT_LOCAL_STORAGE_PATH"],
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
        }))
        from sevflow.setup import ensure_defaults

        ensure_defaults()
        policy = f"bench-policy-{uuid.uuid4().hex[:8]}"
        save_policy(policy)

        print("starting the serving processes (baseline spawn, baseline fast start, sevflow serve, sevflow worker) ...",
              flush=True)
        spawn = BaselineRunner(env, home / "baseline-spawn.log", "spawn", fast_start=False)
        fast = BaselineRunner(env, home / "baseline-fast.log", "fast", fast_start=True)
        worker = Worker(env, home / "sevflow-worker.log")
        import asyncio

        from sevflow.deployments import deploy

        asyncio.run(deploy(name="pool"))
        pool_worker = PoolWorker(env, home / "pool-worker")
        for process in (spawn, fast, worker, pool_worker):
            stack.callback(process.stop)
            process.start()
        spawn.wait_ready(server.api_url)
        fast.wait_ready(server.api_url)
        worker.wait_ready(server.api_url)
        pool_worker.wait_ready(server.api_url)

        configs = [
            Config("baseline spawn", baseline_run(root, "spawn")),
            Config("baseline fast", baseline_run(root, "fast")),
            Config("sevflow", sevflow_run(root, policy)),
            Config("sevflow worker", sevflow_run(root, policy, "application-rollback/pool", "sev-1")),
        ]
        groups = [p.process.pid for p in (spawn, fast, worker, pool_worker) if p.process is not None]
        # Round-robin, so a drift in the machine's load touches every configuration alike.
        for i in range(-warmup, runs):
            for config in configs:
                settle(groups)
                sample = config.run_once(i + warmup)
                label = "warm-up" if i < 0 else f"run {i + 1}/{runs}"
                print(f"  {label:<11} {config.title:<15} approval → change {sample.approval_to_change:6.2f} s,"
                      f" whole run {sample.whole:6.2f} s", flush=True)
                if i >= 0:
                    config.samples.append(sample)
        settle(groups)
        print("stopping ...", flush=True)
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per configuration first (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, repos)")
    parser.add_argument("--raw", action="store_true", help="also print every run's numbers")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="sevflow-bench-"))
    keep = args.keep
    try:
        configs = measure(root, args.runs, args.warmup)
    except KeyboardInterrupt:
        print("interrupted; every process the bench started has been stopped", file=sys.stderr)
        return 130
    except BaseException:
        keep = True  # the logs are what explains the failure
        raise
    finally:
        if keep:
            print(f"logs and repositories kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(render(configs, args.runs, args.warmup))
    if args.raw:
        print(render_raw(configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
