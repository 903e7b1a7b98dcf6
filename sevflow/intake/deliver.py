"""Moves stored alerts into Prefect, in order per incident, for as long as it takes.

For each stored alert (oldest first), on the alert's incident:
- the incident has no run yet: create it from the procedure's deployment with the idempotency
  key `sevflow-intake/<incident id>` (a retry after a lost answer, or a second intake replica,
  gets the same run back);
- write the alert onto the run as a durable timeline record (once per identity, status and
  episode; exact re-deliveries add nothing);
- emit `sevflow.alert.firing` / `sevflow.alert.resolved` on the incident's resource, with a
  deterministic event id, so a retried batch is stored once. Each alert's first delivery (per
  identity, status and episode) has an event of its own; the repeats of it that one pass carries
  share one event, whose payload counts them (`repeats`, with the first and last `intake_seq`):
  a sender re-sending in a loop is a storm of writes the orchestrator's database (which also
  holds the waiting approvals) need not take, and the store keeps every delivery. The sum of
  `repeats` over the events is the number of deliveries (a repeat group whose batch was acked
  but whose ack was lost can be counted twice when the retry groups it differently).

An alert is marked delivered only when all three are done. When Prefect is down or answers
503, the lane of that incident stops at the alert that failed and the pass ends; the next
pass (with backoff) starts from it again, so order within an incident is kept. When Prefect
refuses an alert for good (the run was deleted: 404; a request it will never take: other
4xx), the alert becomes a dead letter: kept in the store, shown in /healthz and by
`sevflow intake-dead-letters`, not retried, and no cause for backoff. Incidents whose run has
reached a final state are closed: a later firing alert opens a new incident.

Each incident's run is created once: the opener (right after the first alert is stored) and
a delivery pass that reaches the same incident share one creation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

from sevflow.deployments import deployment_path
from sevflow.errors import TemporarilyUnavailable
from sevflow.intake.store import Incident, Pending, Store, _seen_key
from sevflow.models import RECORD_PREFIX, REQUESTER_KEY, SEVERITY_FLOOR_KEY, TimelineEntry, incident_resource

log = logging.getLogger("sevflow.intake")


class NotServed(Exception):
    """The procedure has no deployment: nothing serves it (yet)."""


# Seconds between attempts to create a run while Prefect answers 503 (its SQLite is busy): soon,
# and for up to ~10 s, before the delivery pass (with its backoff) takes over.
CREATE_RETRIES = (0.05, 0.1, 0.2, 0.3, *(0.5,) * 18)


def permanent(exc: BaseException) -> bool:
    """Prefect will never take this request, however often it is sent."""
    if isinstance(exc, ObjectNotFound):
        return True
    if isinstance(exc, PrefectHTTPStatusError):
        code = exc.response.status_code
        return 400 <= code < 500 and code not in (408, 409, 425, 429)
    return False


class Deliverer:
    def __init__(self, store: Store, client: PrefectClient, lanes: int = 8,
                 on_run: Callable[[str, str], None] | None = None, close_interval: float = 2.0) -> None:
        self.store = store
        # one client for the process: each new one builds a TLS context (~0.2 s of CPU), and a
        # pass, an opener and the closer each made one
        self.client = client
        self.lanes = lanes
        self.on_run = on_run or (lambda incident_id, flow_run_id: None)
        self.close_interval = close_interval
        self.wake = asyncio.Event()
        self.reachable: bool | None = None
        self.last_error = ""
        self._deployments: dict[str, UUID] = {}
        self._last_close = 0.0
        self._delivered_last = 0
        self.pass_spacing = 0.5
        self._namespace = uuid.UUID(hashlib.md5(store.store_id.encode()).hexdigest())
        self._opening: dict[str, asyncio.Future[None]] = {}
        # Run creations go to Prefect one at a time (the opener's and the delivery lanes'):
        # concurrent ones collided in its database (on SQLite: 503 "database is locked", ~1.2
        # refused per run created in a storm of 50 new incidents, each refused create costing the
        # server nearly a whole one, CPU the intake then lacked); one at a time, 0.1-0.2 per run,
        # and the storm's 50 runs were all created within 3.6 s of its start instead of 3.3.
        self._creating = asyncio.Semaphore(1)

    async def run(self) -> None:
        failures = 0
        last_busy = 0.0
        while True:
            delay = min(0.5 * 2 ** failures, 10.0) if failures else 1.0
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            if failures:  # a wake-up does not cut a backoff short; new alerts wait in the queue
                await asyncio.sleep(max(0.0, delay - 0.01))
            # While alerts keep coming, passes are spaced out so each carries a bigger batch
            # (fewer round trips to Prefect). The first alert after a quiet spell goes at once;
            # new incidents' runs never wait for a pass (see open_new).
            await asyncio.sleep(max(0.0, last_busy + self.pass_spacing - time.monotonic()))
            self.wake.clear()
            try:
                started = time.monotonic()
                ok = await self.pass_once()
                if self._delivered_last:
                    last_busy = started
            except Exception as exc:  # the server went away between calls; keep going
                ok = False
                self._trouble(f"{type(exc).__name__}: {exc}")
            failures = 0 if ok else min(failures + 1, 5)

    async def pass_once(self) -> bool:
        """Deliver what is pending; True when nothing failed."""
        rows = await self.store.pending()
        self._delivered_last = len(rows)
        ok = True
        if rows:
            lanes: dict[str, list[Pending]] = {}
            events: list[dict[str, Any]] = []
            for row in rows:
                lanes.setdefault(row.incident_id or "", []).append(row)
            client = self.client
            gate = asyncio.Semaphore(self.lanes)
            results = await asyncio.gather(*(self._lane(client, gate, lane, events) for lane in lanes.values()))
            if events:
                try:
                    await self._emit(client, events)
                except Exception as exc:
                    self._trouble(f"events: {type(exc).__name__}: {exc}")
                    return False  # nothing marked delivered: records are write-once and runs idempotent
            for done, _ in results:
                if done:
                    await self.store.delivered(done)
            ok = all(failed is False for _, failed in results)
            if ok and self.reachable is False:
                log.warning("Prefect answers again; the queued alerts were delivered.")
            if ok:
                self.reachable = True
            if len(rows) == 2000:
                self.wake.set()  # more are waiting
        if time.monotonic() - self._last_close > self.close_interval:
            self._last_close = time.monotonic()
            await self.close_finished()
        return ok

    async def open_new(self, incidents: asyncio.Queue[str]) -> None:
        """Create the run of each new incident as soon as the intake has stored its first alert,
        without waiting for the delivery pass: that run is what the on-call engineer (and the
        sender's waiting answer) needs first. A failure here is left to the delivery pass."""
        while True:
            incident_id = await incidents.get()
            try:
                incident = self.store.incident(incident_id)
                if incident is None or incident.flow_run_id is not None:
                    continue
                first = await self.store.first_alert(incident_id)
                if first is None:
                    continue
                await self._start_run(self.client, incident, first)
            except (httpx.HTTPError, PrefectHTTPStatusError, ObjectNotFound, NotServed, sqlite3.Error,
                    TemporarilyUnavailable) as exc:  # Prefect or the store, for now: the delivery pass tries again
                self._trouble(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug: its traceback in the log; the delivery pass still tries again
                log.exception("Opening the run of incident %s failed inside the intake; the delivery pass "
                              "tries again", incident_id)
                self._trouble(f"{type(exc).__name__}: {exc}")

    async def _lane(self, client: PrefectClient, gate: asyncio.Semaphore, rows: list[Pending],
                    events: list[dict[str, Any]]) -> tuple[list[int], bool]:
        """Deliver one incident's alerts in order; stop at the first failure. Returns the
        delivered alerts (to mark once the events are in) and whether one failed."""
        async with gate:
            done: list[int] = []
            repeats: dict[str, list[Pending]] = {}  # identity, status and episode -> this pass's repeats
            incident: Incident | None = None
            try:
                for row in rows:
                    try:
                        incident = await self._deliver(client, row)
                    except Exception as exc:
                        error = f"{type(exc).__name__}: {exc}"
                        if permanent(exc):  # retrying cannot help: a dead letter, and the lane goes on
                            log.error("Prefect refused alert #%d (incident %s) for good: %s. It is kept as a "
                                      "dead letter (see /healthz or `sevflow intake-dead-letters`).", row.seq,
                                      row.incident_id, error)
                            await self.store.dead([row.seq], error)
                            continue
                        self._trouble(error, row)
                        await self.store.failed(row.seq, error)
                        return done, True  # keep this incident's order: nothing after it goes first
                    if row.repeat:
                        repeats.setdefault(_seen_key(row.alert), []).append(row)
                    else:
                        events.append(self._event(incident, [row]))
                    done.append(row.seq)
                return done, False
            finally:  # the repeats delivered so far: one event per alert, status and episode
                if incident is not None:
                    events.extend(self._event(incident, group) for group in repeats.values())

    async def _deliver(self, client: PrefectClient, row: Pending) -> Incident:
        assert row.incident_id is not None
        incident = self.store.incident(row.incident_id)
        if incident is None:
            raise RuntimeError(f"incident {row.incident_id} is not in the store")
        if incident.flow_run_id is None:
            await self._start_run(client, incident, row)
        assert incident.flow_run_id is not None
        if not row.repeat:
            await self._record(client, incident, row)
        return incident

    async def _start_run(self, client: PrefectClient, incident: Incident, row: Pending) -> None:
        """Create the incident's run, once: a second caller waits for the first one's creation."""
        while incident.flow_run_id is None:
            opening = self._opening.get(incident.incident_id)
            if opening is not None:
                await asyncio.shield(opening)  # its failure is its caller's to report; then try again
                continue
            opening = self._opening[incident.incident_id] = asyncio.get_running_loop().create_future()
            try:
                await self._create_run(client, incident, row)
            finally:
                opening.set_result(None)
                del self._opening[incident.incident_id]
            return

    async def _create_run(self, client: PrefectClient, incident: Incident, row: Pending) -> None:
        route = incident.route
        deployment_id = await self._deployment(client, route.procedure)
        alert = row.alert
        parameters: dict[str, Any] = {
            target_parameter(route.procedure): route.service,
            "severity": route.severity.value,
            "incident_id": incident.incident_id,
            "reason": f"{alert.source} alert: {alert.summary}"[:500],
            **route.parameters,
        }
        for delay in (*CREATE_RETRIES, None):
            try:
                async with self._creating:
                    flow_run = await client.create_flow_run_from_deployment(
                        deployment_id, parameters=parameters, idempotency_key=f"sevflow-intake/{incident.incident_id}",
                        # The alert's severity, a floor the run cannot go below (set at creation: no
                        # API call changes a run's context afterwards, and no race with the worker).
                        context={SEVERITY_FLOOR_KEY: {
                            "severity": route.severity.value,
                            "why": f"the {alert.source} alert that opened incident {incident.incident_id} is "
                                   f"{route.severity.value} (rule {route.rule})"}},
                        tags=["sevflow", "sevflow-intake", f"incident:{incident.incident_id}",
                              f"sev:{route.severity.number}", f"service:{route.service}"],
                    )
                break
            except ObjectNotFound:
                self._deployments.pop(route.procedure, None)  # re-registered under a new id? read it again
                raise
            except PrefectHTTPStatusError as exc:
                # A busy embedded server (SQLite: "database is locked") answers 503 for a moment;
                # Prefect's client would retry after 2 s, and that was the whole tail of alert ->
                # Running. The idempotency key makes a retry safe.
                if delay is None or exc.response.status_code not in (429, 503):
                    raise
                await asyncio.sleep(delay)
        # Known in memory first: if the store cannot write it now, a restart creates again with
        # the same idempotency key and gets this run back.
        incident.flow_run_id = str(flow_run.id)
        await self._record_requester(client, str(flow_run.id), incident, alert)
        await self.store.set_flow_run(incident.incident_id, str(flow_run.id))
        log.info("Incident %s: started %s for %s (%s), flow run %s, from rule %s", incident.incident_id,
                 route.procedure, route.service, route.severity.value, flow_run.id, route.rule)
        self.on_run(incident.incident_id, str(flow_run.id))

    async def _record_requester(self, client: PrefectClient, flow_run_id: str, incident: Incident, alert: Any) -> None:
        """Who asked for this run's changes: the alert's source and the routing rule that started
        it (the gate shows it, and a policy that forbids self-approval compares against it)."""
        record = {"name": f"{alert.source} alert, rule {incident.route.rule}", "how": "intake",
                  "source": alert.source, "rule": incident.route.rule, "alert": alert.identity,
                  "severity": incident.route.severity.value,
                  "signed_at": datetime.now(timezone.utc).isoformat()}
        try:
            await client.create_flow_run_input(flow_run_id=UUID(flow_run_id), key=REQUESTER_KEY,
                                               value=json.dumps(record))
        except ObjectAlreadyExists:
            pass  # recorded by an earlier attempt (the same run, by its idempotency key)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise

    async def _deployment(self, client: PrefectClient, procedure: str) -> UUID:
        if procedure not in self._deployments:
            try:
                deployment = await client.read_deployment_by_name(deployment_path(procedure))
            except ObjectNotFound as exc:
                raise NotServed(f"no deployment {deployment_path(procedure)}: is `sevflow serve` (or `sevflow up`) "
                                "running against this Prefect server?") from exc
            self._deployments[procedure] = deployment.id
        return self._deployments[procedure]

    async def _record(self, client: PrefectClient, incident: Incident, row: Pending) -> None:
        alert = row.alert
        verb = {"started": "opened the incident", "duplicate": "repeated", "attached": "joined the incident",
                "resolved": "resolved"}.get(row.outcome, row.outcome)
        entry = TimelineEntry(
            at=datetime.fromisoformat(row.received_at),
            source=alert.source,
            kind="alert",
            description=f"Alert {alert.status} ({verb}): {alert.summary}",
            details={"identity": alert.identity, "severity": alert.severity, "event": alert.event,
                     "starts_at": alert.starts_at.isoformat() if alert.starts_at else None,
                     "links": alert.links[:5], "outcome": row.outcome, "intake_seq": row.seq,
                     **({"milestone": "Alert received"} if row.outcome == "started" else {})},
        )
        key = f"{RECORD_PREFIX}alert-{hashlib.sha256(_seen_key(alert).encode()).hexdigest()[:20]}"
        try:
            await client.create_flow_run_input(flow_run_id=UUID(incident.flow_run_id or ""), key=key,
                                               value=entry.model_dump_json())
        except ObjectAlreadyExists:
            pass  # recorded by an earlier attempt or another replica
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise

    def _event(self, incident: Incident, rows: list[Pending]) -> dict[str, Any]:
        """The event of one delivery, or of several repeats of one alert (the last one's content,
        counted), as the API takes it (plain JSON: the server validates it; building Prefect's
        Event model per alert cost more CPU than the rest of the delivery)."""
        row = rows[-1]
        alert = row.alert
        route = incident.route
        seqs = str(row.seq) if len(rows) == 1 else f"{rows[0].seq}-{row.seq}"
        return dict(
            id=str(uuid.uuid5(self._namespace, seqs)),
            occurred=row.received_at,
            event=f"sevflow.alert.{alert.status}",
            resource={
                "prefect.resource.id": incident_resource(incident.incident_id),
                "prefect.resource.name": f"{incident.incident_id} ({incident.service}, {route.severity.value})",
                "sevflow.service": incident.service,
                "sevflow.severity": route.severity.value,
            },
            related=[
                {"prefect.resource.id": f"prefect.flow-run.{incident.flow_run_id}", "prefect.resource.role": "flow-run"},
                {"prefect.resource.id": f"sevflow.alert.{alert.identity}", "prefect.resource.role": "alert",
                 "prefect.resource.name": alert.summary[:200]},
            ],
            payload={"source": alert.source, "identity": alert.identity, "status": alert.status,
                     "outcome": row.outcome, "summary": alert.summary, "severity": alert.severity,
                     "labels": alert.labels, "links": alert.links[:5], "repeat": row.repeat,
                     "repeats": len(rows), "intake_seq": [rows[0].seq, row.seq],
                     **({"first_received_at": rows[0].received_at} if len(rows) > 1 else {})},
        )

    async def _emit(self, client: PrefectClient, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), 1000):
            response = await client._client.post(  # the events REST endpoint: a batch, acknowledged
                "/events", json=events[start:start + 1000])
            response.raise_for_status()

    async def close_finished(self) -> None:
        """Close incidents whose run has ended (or was deleted)."""
        open_runs = {inc.flow_run_id: inc.incident_id for inc in list(self.store.incidents.values())
                     if inc.flow_run_id}
        if not open_runs:
            return
        ids = [UUID(r) for r in open_runs]
        alive: set[str] = set()
        for start in range(0, len(ids), 200):  # the server's page limit
            runs = await self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids[start:start + 200])), limit=200)
            alive |= {str(r.id) for r in runs if not (r.state and r.state.is_final())}
        ended = [incident_id for run_id, incident_id in open_runs.items() if run_id not in alive]
        if ended:
            await self.store.close_incidents(ended)
            log.info("Closed incidents whose run ended: %s", ", ".join(ended))

    def _trouble(self, message: str, row: Pending | None = None) -> None:
        self.last_error = message
        if self.reachable is not False:
            waiting = f" (alert #{row.seq}, incident {row.incident_id})" if row else ""
            log.warning("Cannot deliver to Prefect%s: %s. Alerts stay queued on disk and are retried.", waiting, message)
        self.reachable = False


@functools.lru_cache(maxsize=None)
def target_parameter(procedure: str) -> str:
    """The parameter naming what a procedure acts on: `service`, or `host` for a procedure that
    runs on a host (memory-disk-full): the rule's service (or the label naming it) fills it."""
    from sevflow.deployments import procedures

    flow = procedures().get(procedure)
    names = inspect.signature(flow.fn).parameters if flow is not None else {}
    return "host" if "service" not in names and "host" in names else "service"
