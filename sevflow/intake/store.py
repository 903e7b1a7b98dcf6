"""The intake's durable store: every accepted alert, the incidents the intake opened, and
the queue of what still has to reach Prefect.

One SQLite file (WAL, `synchronous=FULL`): an alert is answered `202` only after the
transaction holding it is on disk. Writes are group-committed: the jobs that queue up while a
commit (fsync) runs in a worker thread go into the next transaction, so a burst of deliveries
costs one fsync per batch, not per alert, and the event loop never waits on the disk. Nothing
is ever deleted: delivered alerts stay, marked.

Jobs run one at a time on the event loop's thread, so decisions that must be consistent across
concurrent deliveries (a new incident, a duplicate, or an alert for an open incident?) cannot
race: two deliveries of one alert cannot both start an incident. (A writer thread per job was
measured first: handing every job to a thread and back cost more CPU than the job.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

from sevflow.intake.alerts import Alert
from sevflow.intake.rules import Route

Outcome = Literal["started", "duplicate", "attached", "resolved", "unmatched", "no-incident"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    group_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    route TEXT NOT NULL,          -- JSON: procedure, severity, parameters
    first_alert TEXT NOT NULL,    -- JSON of the alert that opened it
    opened_at TEXT NOT NULL,
    flow_run_id TEXT,
    closed_at TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    source TEXT NOT NULL,
    identity TEXT NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT NOT NULL,
    incident_id TEXT,
    rule TEXT,
    repeat INTEGER NOT NULL,       -- same identity, status and episode seen before for the incident
    alert TEXT NOT NULL,           -- JSON: the normalised alert
    raw BLOB NOT NULL,             -- the delivery's exact bytes
    delivered_at TEXT,             -- reached Prefect (or had nothing to deliver)
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_identity ON alerts (identity);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_incident_id(route: Route, alert: Alert, received: datetime) -> str:
    """Derived from what the alert says, so two intake replicas that receive the first alert
    of one incident name it alike (and Prefect's idempotency key makes it one run)."""
    day = (alert.starts_at or received).strftime("%Y%m%d")
    digest = hashlib.sha256(f"{route.rule}|{route.service}|{alert.identity}|{alert.episode}".encode()).hexdigest()
    return f"inc-{day}-{digest[:8]}"


@dataclass
class Decision:
    """What the intake did with one alert of a delivery."""

    seq: int
    alert: Alert
    outcome: Outcome
    incident_id: str | None
    rule: str | None
    duplicate: bool
    flow_run_id: str | None = None


@dataclass
class Incident:
    incident_id: str
    service: str
    group_key: str
    rule: str
    route: Route
    first_alert: dict[str, Any]
    opened_at: str
    flow_run_id: str | None = None
    closed_at: str | None = None
    seen: set[str] = field(default_factory=set)


@dataclass
class Pending:
    seq: int
    received_at: str
    outcome: str
    incident_id: str | None
    repeat: bool
    alert: Alert
    attempts: int


class Store:
    """Open with `Store(path)` inside the event loop that will use it; writes go through `_submit`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._queued: list[_Job] = []
        self._flushing: asyncio.Future[None] | None = None
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        if row is None:
            self.store_id = str(uuid.uuid4())
            self._db.execute("INSERT INTO meta VALUES ('store_id', ?)", (self.store_id,))
        else:
            self.store_id = row[0]
        self._load_memory()

    def _load_memory(self) -> None:
        """Open incidents, indexed the two ways an alert can belong to one."""
        self.incidents: dict[str, Incident] = {}
        self._by_identity: dict[str, str] = {}
        self._by_group: dict[tuple[str, str], str] = {}
        for r in self._db.execute("SELECT incident_id, service, group_key, rule, route, first_alert, opened_at, "
                                  "flow_run_id FROM incidents WHERE closed_at IS NULL"):
            inc = Incident(r[0], r[1], r[2], r[3], Route.model_validate_json(r[4]), json.loads(r[5]), r[6], r[7])
            self._index(inc)
        for identity, incident_id, alert in self._db.execute(
                "SELECT identity, incident_id, alert FROM alerts WHERE incident_id IN "
                "(SELECT incident_id FROM incidents WHERE closed_at IS NULL)"):
            self._by_identity[identity] = incident_id
            self.incidents[incident_id].seen.add(_seen_key(Alert.model_validate_json(alert)))

    def _index(self, inc: Incident) -> None:
        self.incidents[inc.incident_id] = inc
        self._by_group[(inc.service, inc.group_key)] = inc.incident_id
        self._by_identity[inc.first_alert["identity"]] = inc.incident_id

    # --- the writer thread ---------------------------------------------------------------

    async def _flush(self) -> None:
        """Run what has queued, commit it in a worker thread, settle it; again while more came."""
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                results = self._run_batch(batch)
                if any(isinstance(r, _JobFailed) for r in results) and len(batch) > 1:
                    # One job failed and took the transaction with it: run each on its own, so
                    # the others are stored and only the bad one fails.
                    self._load_memory()
                    results = []
                    for job in batch:
                        one = self._run_batch([job])
                        if not isinstance(one[0], _JobFailed):
                            one = await self._commit(one)
                        results += one
                elif not any(isinstance(r, _JobFailed) for r in results):
                    results = await self._commit(results)
                _settle(list(zip((f for _, f in batch), results)))
        finally:
            self._flushing = None

    def _run_batch(self, batch: list[_Job]) -> list[Any]:
        """Run the jobs in one open transaction (committed by `_commit`)."""
        results: list[Any] = []
        self._db.execute("BEGIN IMMEDIATE")
        for fn, _ in batch:
            try:
                results.append(fn(self._db))
            except Exception as exc:
                self._db.execute("ROLLBACK")
                self._load_memory()
                return [_JobFailed(exc)] * len(batch)
        return results

    async def _commit(self, results: list[Any]) -> list[Any]:
        try:
            await asyncio.to_thread(self._db.execute, "COMMIT")
        except sqlite3.Error as exc:  # disk full, I/O error: nobody in this batch is stored
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._load_memory()  # forget what the lost batch decided
            return [_JobFailed(exc)] * len(results)
        return results

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((fn, future))
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())
        return await future

    async def aclose(self) -> None:
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        self._db.close()

    # --- accepting alerts -------------------------------------------------------------------

    async def accept(self, routed: list[tuple[Alert, Route | None]], raw: bytes) -> list[Decision]:
        """Decide and store every alert of one delivery, durably, in one transaction."""
        return await self._submit(lambda db: self._accept(db, routed, raw))

    def _accept(self, db: sqlite3.Connection, routed: list[tuple[Alert, Route | None]], raw: bytes) -> list[Decision]:
        received = datetime.now(timezone.utc)
        out: list[Decision] = []
        undo: list[Callable[[], None]] = []
        try:
            for alert, route in routed:
                out.append(self._decide(db, alert, route, raw, received, undo))
        except Exception:
            for step in reversed(undo):  # keep memory as the (rolled back) database has it
                step()
            raise
        return out

    def _decide(self, db: sqlite3.Connection, alert: Alert, route: Route | None, raw: bytes,
                received: datetime, undo: list[Callable[[], None]]) -> Decision:
        incident_id = self._by_identity.get(alert.identity)
        outcome: Outcome
        if alert.status == "resolved":
            outcome = "resolved" if incident_id else "no-incident"
        elif incident_id:
            outcome = "duplicate"
        elif route is not None and (group := self._by_group.get((route.service, alert.group_key))):
            incident_id, outcome = group, "attached"
        elif route is not None and alert.opens:
            incident_id, outcome = new_incident_id(route, alert, received), "started"
            row = db.execute("SELECT 1 FROM incidents WHERE incident_id=?", (incident_id,)).fetchone()
            if row is not None:  # a late re-delivery of an episode whose incident is closed
                outcome = "duplicate"
            else:
                inc = Incident(incident_id, route.service, alert.group_key, route.rule, route,
                               alert.model_dump(mode="json", exclude={"raw"}), received.isoformat())
                db.execute("INSERT INTO incidents (incident_id, service, group_key, rule, route, first_alert, "
                           "opened_at) VALUES (?,?,?,?,?,?,?)",
                           (incident_id, inc.service, inc.group_key, inc.rule, route.model_dump_json(),
                            json.dumps(inc.first_alert), inc.opened_at))
                self._index(inc)
                undo.append(lambda: self._forget(incident_id))
        else:
            outcome = "no-incident" if route is not None else "unmatched"
        inc = self.incidents.get(incident_id) if incident_id else None
        repeat = False
        if inc is not None:
            key = _seen_key(alert)
            repeat = key in inc.seen
            inc.seen.add(key)
            if alert.identity not in self._by_identity:
                self._by_identity[alert.identity] = inc.incident_id
                undo.append(lambda: self._by_identity.pop(alert.identity, None))
        deliver = incident_id is not None
        cur = db.execute(
            "INSERT INTO alerts (received_at, source, identity, status, outcome, incident_id, rule, repeat, alert, raw, "
            "delivered_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (received.isoformat(), alert.source, alert.identity, alert.status, outcome, incident_id,
             route.rule if route else None, int(repeat), alert.model_dump_json(), raw,
             None if deliver else received.isoformat()),
        )
        return Decision(seq=int(cur.lastrowid or 0), alert=alert, outcome=outcome, incident_id=incident_id,
                        rule=route.rule if route else None, duplicate=outcome == "duplicate",
                        flow_run_id=inc.flow_run_id if inc else None)

    def _forget(self, incident_id: str) -> None:
        inc = self.incidents.pop(incident_id, None)
        if inc is None:
            return
        for key, value in list(self._by_identity.items()):
            if value == incident_id:
                del self._by_identity[key]
        self._by_group.pop((inc.service, inc.group_key), None)

    # --- the deliverer's side ------------------------------------------------------------------

    async def pending(self, limit: int = 2000) -> list[Pending]:
        def read(db: sqlite3.Connection) -> list[Pending]:
            rows = db.execute("SELECT seq, received_at, outcome, incident_id, repeat, alert, attempts FROM alerts "
                              "WHERE delivered_at IS NULL ORDER BY seq LIMIT ?", (limit,)).fetchall()
            return [Pending(r[0], r[1], r[2], r[3], bool(r[4]), Alert.model_validate_json(r[5]), r[6]) for r in rows]
        return await self._submit(read)

    async def first_alert(self, incident_id: str) -> Pending | None:
        def read(db: sqlite3.Connection) -> Pending | None:
            r = db.execute("SELECT seq, received_at, outcome, incident_id, repeat, alert, attempts FROM alerts "
                           "WHERE incident_id=? ORDER BY seq LIMIT 1", (incident_id,)).fetchone()
            return Pending(r[0], r[1], r[2], r[3], bool(r[4]), Alert.model_validate_json(r[5]), r[6]) if r else None
        return await self._submit(read)

    def incident(self, incident_id: str) -> Incident | None:
        inc = self.incidents.get(incident_id)
        if inc is not None:
            return inc
        row = self._read("SELECT incident_id, service, group_key, rule, route, first_alert, opened_at, flow_run_id, "
                         "closed_at FROM incidents WHERE incident_id=?", (incident_id,))
        if not row:
            return None
        r = row[0]
        return Incident(r[0], r[1], r[2], r[3], Route.model_validate_json(r[4]), json.loads(r[5]), r[6], r[7], r[8])

    async def set_flow_run(self, incident_id: str, flow_run_id: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE incidents SET flow_run_id=? WHERE incident_id=?", (flow_run_id, incident_id))
            if incident_id in self.incidents:
                self.incidents[incident_id].flow_run_id = flow_run_id
        await self._submit(write)

    async def delivered(self, seqs: list[int]) -> None:
        at = _now()
        await self._submit(lambda db: db.executemany(
            "UPDATE alerts SET delivered_at=?, last_error=NULL WHERE seq=?", [(at, s) for s in seqs]))

    async def failed(self, seq: int, error: str) -> None:
        await self._submit(lambda db: db.execute(
            "UPDATE alerts SET attempts=attempts+1, last_error=? WHERE seq=?", (error[:500], seq)))

    async def close_incidents(self, incident_ids: list[str]) -> None:
        at = _now()

        def write(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE incidents SET closed_at=? WHERE incident_id=?", [(at, i) for i in incident_ids])
            for i in incident_ids:
                self._forget(i)
        await self._submit(write)

    # --- reading (own connections; WAL readers do not block the writer) -----------------------

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        out = {"queued": 0}
        for outcome, n in self._read("SELECT outcome, count(*) FROM alerts GROUP BY outcome"):
            out[outcome] = n
        out["queued"] = self._read("SELECT count(*) FROM alerts WHERE delivered_at IS NULL")[0][0]
        out["accepted"] = sum(v for k, v in out.items() if k != "queued")
        out["open_incidents"] = len(self.incidents)
        return out


_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


@dataclass
class _JobFailed:
    error: BaseException


def _settle(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in settled:
        if future.done():
            continue
        if isinstance(result, _JobFailed):
            future.set_exception(result.error)
        else:
            future.set_result(result)


def _seen_key(alert: Alert) -> str:
    return f"{alert.identity}|{alert.status}|{alert.episode}"
