"""`sevflow serve`: a worker process that serves every procedure (Prefect's Runner).

Runs are started in child processes. Prefect's Runner spawns each child from a fresh
interpreter, which costs this machine ~2.5 s of imports per start, and every approval
restarts its run (a suspended run is rescheduled). So children are forked from a forkserver
that has Prefect and the flows imported already. Measured by bench/approval_latency.py on
this 2-core machine (medians, poll 0.2 s): approval → change starts 4.9 s with plain spawn,
2.0 s for a bare suspend/resume flow with this fast start, 2.4 s for sevflow's
application-rollback. If Prefect's internals differ from what this expects, the worker
falls back to plain spawn and says so.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
from typing import Any

from prefect.logging import get_logger

from sevflow import setup
from sevflow.deployments import deployment_kwargs, flow_modules

log = get_logger("sevflow.worker")


class _ForkserverShim:
    """Stands in for the `multiprocessing` module inside prefect.flow_engine."""

    def __init__(self, preload: list[str]) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(preload)
        # Start it now, not at the first run: the first approval after a worker restart
        # should not pay for the imports.
        from multiprocessing import forkserver

        forkserver.ensure_running()

    def get_context(self, method: str | None = None) -> Any:
        return self._ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def install_fast_start() -> bool:
    import prefect.flow_engine as engine

    if not hasattr(engine, "run_flow_in_subprocess") or getattr(engine, "multiprocessing", None) is not multiprocessing:
        log.warning("Prefect's flow engine is not as expected: flow runs start by plain spawn (slower).")
        return False
    engine.multiprocessing = _ForkserverShim(["prefect", "prefect.flow_engine", *flow_modules()])  # type: ignore[attr-defined]
    return True


DRAIN_SECONDS = 8.0


def _draining_runner_class() -> type:
    from prefect.runner import Runner

    class DrainingRunner(Runner):
        """Prefect's Runner, stopped gently: on SIGTERM (or Ctrl-C) it takes no new run and gives
        the runs in flight up to DRAIN_SECONDS to end (an escalation pass takes a second or two),
        then cancels what is left. Prefect's own handler cancels at once, so a watcher pass
        caught by a Ctrl-C of `sevflow up` ended Cancelled or, signalled directly, Crashed."""

        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            if not self.started or self.stopping or self._loop is None:
                raise SystemExit(0)
            self.stopping = True
            poller = getattr(self, "_scheduled_run_poller", None)
            if poller is not None:
                poller.stopping = True
            log.info("Stopping: no new runs; waiting up to %.0f s for runs in flight.", DRAIN_SECONDS)
            self.execute_in_background(self._drain_then_stop)

        async def _drain_then_stop(self) -> None:
            import anyio

            poller = getattr(self, "_scheduled_run_poller", None)

            def in_flight() -> bool:
                submitting = getattr(poller, "_submitting_flow_run_ids", ())
                return bool(self._process_manager.flow_run_ids() or submitting)

            deadline = anyio.current_time() + DRAIN_SECONDS
            while in_flight() and anyio.current_time() < deadline:
                await anyio.sleep(0.1)
            await self.astop()

    return DrainingRunner


async def start_due_escalations(now: Any = None) -> str | None:
    """One look of the escalation watcher: when a waiting gate's next tier (or its expiry) is due,
    start a run of the watcher's deployment (Escalation Path) and return its id; else None.

    The watcher used to be a deployment on a 30 s schedule, so the run list and the event feed
    were mostly its empty passes (16 of 18 runs after ten minutes). Now a worker looks, read only,
    and a run exists only when it has something to do. Several workers looking at once start one
    run: the idempotency key names what is due and the minute; a run that died is replaced the
    next minute, and the escalation itself is once per tier whatever runs it (write-once records).
    """
    import hashlib

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from sevflow.deployments import deployment_path, watcher
    from sevflow.gate import due_escalations
    from sevflow.models import utcnow

    now = now or utcnow()
    due = await asyncio.to_thread(due_escalations, now)
    if not due:
        return None
    key = hashlib.sha256(("\n".join(due) + f"\n{now:%Y%m%dT%H%M}").encode()).hexdigest()[:32]
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(deployment_path(watcher().name))
        except ObjectNotFound:
            log.warning("Escalation due (%s) but the watcher is not deployed: run `sevflow escalate`.", ", ".join(due))
            return None
        run = await client.create_flow_run_from_deployment(
            deployment.id, idempotency_key=f"sevflow-escalation-{key}", tags=["sevflow-watcher"])
    log.info("Escalation due (%s): watcher run %s.", ", ".join(due), run.id)
    return str(run.id)


async def watch_gates(interval: float) -> None:
    """Look for due escalations every `interval` seconds until cancelled; never dies of an error."""
    log.info("Escalation watcher: looking at waiting gates every %.0f s; it starts a run of "
             "approval-escalation only when a tier or an expiry is due.", interval)
    while True:
        await asyncio.sleep(interval)
        try:
            await start_due_escalations()
        except Exception as exc:  # noqa: BLE001 - the next look may succeed; a worker must not fall over
            log.warning("Escalation look failed (%s: %s); trying again in %.0f s.", type(exc).__name__, exc, interval)


async def _serve(limit: int | None, query_seconds: float, escalation_interval: float | None) -> None:
    import signal

    # prefetch 0: a run is taken when it is due, not up to 10 s early and then held waiting,
    # which a stop would have to cancel (a resumed run is due at once: no latency lost).
    runner = _draining_runner_class()(name=f"sevflow-{socket.gethostname()}", query_seconds=query_seconds,
                                      limit=limit, prefetch_seconds=0)
    signal.signal(signal.SIGINT, runner.handle_sigterm)  # Ctrl-C in a terminal: the same gentle stop
    kept = await _kept_schedules()
    for flow, kwargs in deployment_kwargs():
        await runner.add_flow(flow, **kwargs)
    await _restore_schedules(kept)
    looking = asyncio.create_task(watch_gates(escalation_interval)) if escalation_interval else None
    try:
        await runner.start()
    finally:
        if looking:
            looking.cancel()


KEPT_SCHEDULE_PREFIX = "sevflow-cleanup-"
"""Schedules a procedure added to a served deployment (Memory/Disk Full's approved cleanup
check). Registering a deployment again replaces all its schedules (Prefect's upsert), so
the worker reads these before it registers and puts them back after."""


async def _kept_schedules() -> dict[str, list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from sevflow.deployments import deployment_path, procedures

    kept: dict[str, list[Any]] = {}
    async with get_client() as client:
        for name in procedures():
            try:
                dep = await client.read_deployment_by_name(deployment_path(name))
            except ObjectNotFound:
                continue
            schedules = [s for s in await client.read_deployment_schedules(dep.id)
                         if (s.slug or "").startswith(KEPT_SCHEDULE_PREFIX)]
            if schedules:
                kept[deployment_path(name)] = schedules
    return kept


async def _restore_schedules(kept: dict[str, list[Any]]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    async with get_client() as client:
        for name, schedules in kept.items():
            dep = await client.read_deployment_by_name(name)
            present = {s.slug for s in await client.read_deployment_schedules(dep.id)}
            missing = [DeploymentScheduleCreate(schedule=s.schedule, active=s.active, parameters=s.parameters,
                                                slug=s.slug) for s in schedules if s.slug not in present]
            if missing:
                await client.create_deployment_schedules(dep.id, missing)
                log.info("Kept %d approved schedule(s) of %s: %s", len(missing), name,
                         ", ".join(str(s.slug) for s in missing))


def serve(limit: int | None = 20, query_seconds: float = 0.2, escalation_interval: float | None = 30.0) -> None:
    """Register sevflow's blocks and defaults, then serve every procedure until stopped."""
    setup.ensure_defaults()
    configure_result_storage()
    install_fast_start()
    asyncio.run(_serve(limit, query_seconds, escalation_interval))


# --- result storage every worker reaches -------------------------------------------------

RESULTS_BLOCK = "s3-bucket/sevflow-results"


def configure_result_storage() -> str:
    """Point this process's (and its flow runs') default result storage at the shared block.

    A gate answered while its worker is gone is replayed on another worker, which skips the
    steps already done only if it can read their persisted results: they must live where every
    worker reaches. PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, if set, wins; otherwise a
    `s3-bucket/sevflow-results` block on the server (`sevflow storage s3 ...` saves one) is used.
    Without either, results stay on this host's disk and a run resumes only here.
    """
    import os

    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK

    chosen = os.environ.get("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK") or PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK.value()
    if not chosen:
        from prefect.blocks.core import Block

        try:
            Block.load(RESULTS_BLOCK)
        except ValueError:
            log.warning("Task results are stored on this host only (no %s block, no "
                        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK): a gate opened here resumes only here.",
                        RESULTS_BLOCK)
            return "local"
        chosen = RESULTS_BLOCK
    # In the environment, so the forkserver and every flow run forked from it inherit it.
    os.environ["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] = chosen
    log.info("Task results are persisted to %s.", chosen)
    return chosen


# --- `sevflow worker`: a Prefect process worker on the `sevflow` work pool ---------------


def _work_pool_worker_class() -> type:
    """ProcessWorker that starts sevflow's own flows by the forkserver fast start.

    A plain process worker runs `python -m prefect.engine` per run (a fresh interpreter, ~2.5 s
    of imports here, paid again on every approval since a resumed run starts anew). For flows
    sevflow knows it runs the flow object directly, as `sevflow serve`'s Runner does
    (Prefect's DirectSubprocessStarter), so runs are forked from the preloaded forkserver.
    Any other flow in the pool runs the plain way.
    """
    import os

    import anyio
    from prefect.flow_engine import run_flow_in_subprocess
    from prefect.runner._flow_run_executor import FlowRunExecutorContext
    from prefect.runner._process_manager import ProcessHandle
    from prefect.workers.process import ProcessWorker, ProcessWorkerResult

    from sevflow.deployments import deployment_name, procedures, watcher

    known = {f.name: f for f in (*procedures().values(), watcher())}

    class ForkedFlowStarter:
        """Prefect's DirectSubprocessStarter, plus the job's environment (work pool and
        deployment `env` job variables), which a fork does not otherwise receive."""

        def __init__(self, flow: Any, env: dict[str, str | None], control_channel: Any) -> None:
            self._flow, self._env, self._control_channel = flow, env, control_channel

        async def start(self, flow_run: Any, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            env: dict[str, str | None] = {**self._env, "PREFECT__DEPLOYMENT_NAME": deployment_name(self._flow.name)}
            registered = False
            try:
                port, token = self._control_channel.register(flow_run.id)
                env |= {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                registered = True
            except RuntimeError:
                pass  # no control channel: cancellation falls back to killing the process
            handed_off = False
            try:
                process = run_flow_in_subprocess(self._flow, flow_run=flow_run, env=env)
                handle = ProcessHandle(process)
                task_status.started(handle)
                handed_off = True
                await anyio.to_thread.run_sync(process.join)
            except BaseException:
                if registered and not handed_off:
                    self._control_channel.unregister(flow_run.id)
                raise

    class SevflowWorker(ProcessWorker):
        _flow_names: dict[Any, str] = {}
        stopping = False

        async def get_and_submit_flow_runs(self) -> list[Any]:
            if self.stopping:
                return []  # draining: take no new run
            return await super().get_and_submit_flow_runs()

        async def drain(self, seconds: float) -> None:
            """Take no new run; give the runs in flight up to `seconds` to end."""
            self.stopping = True
            deadline = anyio.current_time() + seconds
            while self._limiter is not None and self._limiter.borrowed_tokens and anyio.current_time() < deadline:
                await anyio.sleep(0.1)

        async def _known_flow(self, flow_run: Any) -> Any:
            if flow_run.flow_id not in self._flow_names:
                self._flow_names[flow_run.flow_id] = (await self.client.read_flow(flow_run.flow_id)).name
            return known.get(self._flow_names[flow_run.flow_id])

        async def run(self, flow_run: Any, configuration: Any, task_status: Any = None) -> Any:
            flow = await self._known_flow(flow_run)
            if flow is None or configuration._command_configured:
                return await super().run(flow_run, configuration, task_status)
            task_status = task_status or anyio.TASK_STATUS_IGNORED
            own_env = {k: v for k, v in configuration.env.items() if os.environ.get(k) != v}
            execution: Any = None

            async def resolve(_: Any) -> Any:
                return flow

            async with FlowRunExecutorContext() as ctx:
                executor = ctx.create_executor(
                    flow_run, ForkedFlowStarter(flow, own_env, ctx.control_channel),
                    resolve_flow=resolve, propose_submitting=False,
                )

                async def execute(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                    nonlocal execution
                    execution = await executor.submit(task_status=task_status)

                async with anyio.create_task_group() as group:
                    handle = await group.start(execute)
                    task_status.started(handle.pid)
            if execution is None or execution.status_code is None:
                raise RuntimeError("Failed to start flow run process.")
            return ProcessWorkerResult(status_code=execution.status_code, identifier=str(execution.handle.pid))

    return SevflowWorker


async def _work(queues: list[str], name: str, limit: int | None, hosts: tuple[str, ...],
                escalation_interval: float | None) -> None:
    from prefect.client.orchestration import get_client

    from sevflow.deployments import POOL, ensure_pool

    async with get_client() as client:
        await ensure_pool(client, hosts)
    import signal

    worker = _work_pool_worker_class()(work_pool_name=POOL, work_queues=queues, name=name, limit=limit,
                                       create_pool_if_not_found=False)
    main = asyncio.current_task()
    assert main is not None

    async def stop_gently() -> None:
        log.info("Stopping: no new runs; waiting up to %.0f s for runs in flight.", DRAIN_SECONDS)
        await worker.drain(DRAIN_SECONDS)
        main.cancel()

    def on_signal() -> None:
        if not worker.stopping:
            asyncio.get_running_loop().create_task(stop_gently())

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    looking = asyncio.create_task(watch_gates(escalation_interval)) if escalation_interval else None
    try:
        await worker.start(printer=log.info)
    except asyncio.CancelledError:
        if not worker.stopping:
            raise
        log.info("Worker %s stopped.", name)
    finally:
        if looking:
            looking.cancel()


def work(host: str | None = None, limit: int | None = 20, query_seconds: float = 0.2,
         escalation_interval: float | None = 30.0) -> None:
    """Register sevflow's blocks and defaults, then pull runs from the `sevflow` work pool until
    stopped: from queues sev-1 … sev-4 (in that priority), or only `host-<host>` with `host`.
    A severity worker also looks for due escalations every `escalation_interval` seconds."""
    import os

    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

    from sevflow.deployments import SEVERITY_QUEUES, host_queue

    setup.ensure_defaults()
    configure_result_storage()
    install_fast_start()
    queues = [host_queue(host)] if host else list(SEVERITY_QUEUES)
    name = f"sevflow-{host or socket.gethostname()}-{os.getpid()}"
    with temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: query_seconds}):
        asyncio.run(_work(queues, name, limit, (host,) if host else (), None if host else escalation_interval))
