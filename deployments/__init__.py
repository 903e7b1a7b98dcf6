"""How each procedure is deployed: one deployment per flow, named after its runbook section so
the UI's deployment list reads as the runbook, served by `sevflow serve` (and `sevflow up`),
plus the scheduled escalation watcher."""

from __future__ import annotations

from typing import Any

from prefect import Flow

# Each flow's deployment, named as the runbook (EMERGENCY-PROCEDURES.md) names its section.
# Prefect refuses '/' in a name, so "Memory/Disk Full" reads "Memory or Disk Full".
RUNBOOK_NAMES: dict[str, str] = {
    "production-system-down": "Production System Down",
    "security-breach": "Security Breach",
    "data-corruption": "Data Corruption",
    "memory-disk-full": "Memory or Disk Full",
    "application-rollback": "Rollback: Application",
    "configuration-rollback": "Rollback: Configuration",
    "database-rollback": "Rollback: Database",
    "approval-escalation": "Escalation Path",
    "post-incident-follow-up": "Post-Incident Follow-up",
}


def deployment_name(flow_name: str) -> str:
    """The deployment's name for flow `flow_name` (its runbook section)."""
    try:
        return RUNBOOK_NAMES[flow_name]
    except KeyError:
        raise ValueError(f"{flow_name!r} is not a sevflow procedure; procedures: {', '.join(RUNBOOK_NAMES)}") from None


def deployment_path(flow_name: str) -> str:
    """`<flow>/<deployment>`, as run_deployment and read_deployment_by_name take it."""
    return f"{flow_name}/{deployment_name(flow_name)}"


def procedures() -> dict[str, Flow[Any, Any]]:
    """Every procedure a person or an alert can start, by flow name."""
    from sevflow.flows.application_rollback import application_rollback
    from sevflow.flows.configuration_rollback import configuration_rollback
    from sevflow.flows.data_corruption import data_corruption
    from sevflow.flows.database_rollback import database_rollback
    from sevflow.flows.memory_disk_full import memory_disk_full
    from sevflow.flows.production_system_down import production_system_down
    from sevflow.flows.security_breach import security_breach

    return {f.name: f for f in (application_rollback, configuration_rollback, production_system_down,
                                security_breach, data_corruption, database_rollback, memory_disk_full)}


def watcher() -> Flow[Any, Any]:
    from sevflow.flows.approval_escalation import approval_escalation

    return approval_escalation


def follow_up() -> Flow[Any, Any]:
    """The Post-Incident Follow-up: scheduled by a procedure that resolves an incident, not started by people."""
    from sevflow.flows.post_incident_follow_up import post_incident_follow_up

    return post_incident_follow_up


def flow_modules() -> list[str]:
    """Modules a worker process needs imported before it runs any flow."""
    return [f.fn.__module__ for f in (*procedures().values(), watcher(), follow_up())]


def deployment_kwargs() -> list[tuple[Flow[Any, Any], dict[str, Any]]]:
    """(flow, arguments for Runner.add_flow) for everything sevflow serves. The watcher has no
    schedule: workers look for due escalations and start its run only then (sevflow.worker)."""
    out: list[tuple[Flow[Any, Any], dict[str, Any]]] = [
        (f, dict(name=deployment_name(f.name), tags=["sevflow"],
                 description=(f.description or "").strip().split("\n")[0]))
        for f in procedures().values()
    ]
    out.append((watcher(), dict(name=deployment_name(watcher().name), tags=["sevflow-watcher"],
                                description=(watcher().description or "").strip().split("\n")[0])))
    out.append((follow_up(), dict(name=deployment_name(follow_up().name), tags=["sevflow"],
                                  description=(follow_up().description or "").strip().split("\n")[0])))
    return out


# --- the work pool: `sevflow deploy` and `sevflow worker` --------------------------------
#
# Scale-out runs every procedure from one Prefect work pool (type `process`). Its queues are
# the runbook's severities, in priority order: a worker asks the server for scheduled runs
# and the server hands them out by queue priority first, then by scheduled time (Prefect's
# `get-runs-from-worker-queues` query), so a SEV-1 run waiting behind ten SEV-3 runs starts
# first. A run goes to its severity's queue by `work_queue_name` at run creation
# (`run_queue`); a run created without one (the UI's Run button) lands on the deployment's
# queue, `sev-2`, the procedures' default severity. Procedures that must run on the affected
# host go to that host's queue (`host-<name>`), polled only by `sevflow worker --host <name>`.

POOL = "sevflow"
SEVERITY_QUEUES = ("sev-1", "sev-2", "sev-3", "sev-4")
DEFAULT_QUEUE = "sev-2"
WATCHER_QUEUE = "sev-1"  # the watcher is tiny and decides whether people get paged: never behind SEV-3 work


def host_queue(host: str) -> str:
    """The queue of runs that must run on `host` (polled by `sevflow worker --host <host>`)."""
    if not host or any(c in host for c in "/% "):
        raise ValueError(f"host name {host!r}: no spaces, '/' or '%'")
    return f"host-{host}"


def severity_queue(severity: Any) -> str:
    """`SEV-1` (or a Severity) → `sev-1`."""
    value = getattr(severity, "value", severity)
    queue = str(value).strip().lower()
    if queue not in SEVERITY_QUEUES:
        raise ValueError(f"unknown severity {value!r}: one of SEV-1 … SEV-4")
    return queue


def run_queue(deployment_work_pool: str | None, severity: Any, host: str | None = None) -> str | None:
    """The `work_queue_name` to create a run with: its host's or its severity's queue when the
    deployment is in a work pool; None for a served deployment (which has no queues)."""
    if not deployment_work_pool:
        return None
    return host_queue(host) if host else severity_queue(severity or "SEV-2")


def entrypoint(flow: Flow[Any, Any]) -> str:
    """Module-style entrypoint (`sevflow.flows.x:fn`): works wherever sevflow is pip-installed,
    with no source checkout or pull step on the worker."""
    return f"{flow.fn.__module__}:{flow.fn.__name__}"


async def ensure_pool(client: Any, hosts: tuple[str, ...] = ()) -> None:
    """Create the `sevflow` process work pool if missing, and its queues with their priorities:
    sev-1 … sev-4 first (1 … 4), then one queue per host. Idempotent."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        await client.read_work_pool(POOL)
    except ObjectNotFound:
        try:
            await client.create_work_pool(WorkPoolCreate(
                name=POOL, type=ProcessWorker.type,
                description="sevflow procedures; queues sev-1 … sev-4 in priority order, host-<name> per host",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ))
        except ObjectAlreadyExists:
            pass  # another `sevflow deploy` or worker made it meanwhile
    wanted = [*SEVERITY_QUEUES, *(host_queue(h) for h in hosts)]
    for priority, name in enumerate(wanted, start=1):
        existing = {q.name: q for q in await client.read_work_queues(work_pool_name=POOL)}
        queue = existing.get(name)
        if queue is None:
            try:
                await client.create_work_queue(name=name, work_pool_name=POOL, priority=priority,
                                               description=f"sevflow runs for {name}")
            except ObjectAlreadyExists:
                pass
        elif name in SEVERITY_QUEUES and queue.priority != priority:
            await client.update_work_queue(queue.id, priority=priority)


async def deploy(hosts: tuple[str, ...] = (), name: str | None = None) -> list[str]:
    """Register every procedure (and the escalation watcher) as deployment `<flow>/<runbook
    section>` in the work pool, on the server PREFECT_API_URL names. Returns `flow/deployment`
    names. (`name`: one other name for all, for the benchmark that runs both kinds on one server.)"""
    from prefect.client.orchestration import get_client
    from prefect.types.entrypoint import EntrypointType

    async with get_client() as client:
        await ensure_pool(client, hosts)
    done: list[str] = []
    for flow, kwargs in deployment_kwargs():
        queue = WATCHER_QUEUE if flow is watcher() or flow.name == watcher().name else DEFAULT_QUEUE
        deployment = await flow.ato_deployment(
            work_queue_name=queue, entrypoint_type=EntrypointType.MODULE_PATH, **(kwargs | ({"name": name} if name else {})),
        )
        deployment.entrypoint = entrypoint(flow)
        await deployment.aapply(work_pool_name=POOL)
        done.append(f"{flow.name}/{name or kwargs['name']}")
    return done
