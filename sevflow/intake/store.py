"""The intake's durable store: every accepted alert, the incidents the intake opened, and
the queue of what still has to reach Prefect.

One SQLite file (WAL, `synchronous=FULL`): an alert is answered `202` only after the
transaction holding it is on disk. Writes are group-committed: the jobs that queue up while a
commit (fsync) runs in a worker thread go into the next transaction, so a burst of deliveries
costs one fsync per batch, not per alert, and the event loop never waits on the disk. Nothing
is ever deleted: delivered alerts stay, marked; a delivery's body is stored once, however
many alerts it holds.

Faults: every write that fails (locked by another process, read-only, full disk, I/O error)
fails the requests of its batch with `TemporarilyUnavailable` (503, the sender retries); the
store never leaves a request waiting. A store file SQLite cannot read (corrupt) is set aside
under a new name, never deleted, with a loud log line, and a fresh store is started. A store
that cannot be opened (read-only, missing permissions) is retried every few seconds while
every delivery gets 503.

Jobs run one at a time on the event loop's thread, so decisions that must be consistent across
concurrent deliveries (a new incident, a duplicate, or an alert for an open incident?) cannot
race: two deliveries of one alert cannot both start an incident. (A writer thread per job was
measured first: handing every job to a thread and back cost more CPU than the job.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

from sevflow.errors import TemporarilyUnavailable
from sevflow.intake.alerts import Alert
from sevflow.intake.rules import Route

log = logging.getLogger("sevflow.intake")

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
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    source TEXT NOT NULL,
    body BLOB NOT NULL             -- the delivery's exact bytes, once
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
    delivery_id INTEGER,           -- the delivery (its exact bytes) this alert came in
    delivered_at TEXT,             -- reached Prefect (or had nothing to deliver)
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead_at TEXT                   -- Prefect refused it for good (a dead letter); kept, not retried
);
CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_identity ON alerts (identity);
-- an incident's alerts in order (its first one opens its run; a restart reloads the open ones):
-- without it each new incident's first alert was a scan of the whole store, on the event loop
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident_id, seq);
-- which incident each firing (identity and episode) belonged to, open or closed: a re-delivery
-- after the incident's run ended is a duplicate of that incident, never a new one
CREATE TABLE IF NOT EXISTS episodes (
    identity TEXT NOT NULL,
    episode TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    PRIMARY KEY (identity, episode)
) WITHOUT ROWID;
"""
# Stores written before deliveries and episodes existed: add what is missing, fill episodes.
_MIGRATIONS = {
    "delivery_id": "ALTER TABLE alerts ADD COLUMN delivery_id INTEGER",
    "dead_at": "ALTER TABLE alerts ADD COLUMN dead_at TEXT",
}
_CORRUPT = ("file is not a database", "database disk image is malformed", "malformed database schema")


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
    """Open with `Store(path)` inside the event loop that will use it; writes go through `_submit`.

    Never raises on open: a store that cannot be opened is `available == False`, says why in
    `error`, and `reopen()` tries again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queued: list[_Job] = []
        self._flushing: asyncio.Future[None] | None = None
        self._db: sqlite3.Connection | None = None
        self._legacy_raw = False
        self.error = ""  # why the store cannot accept now ("" when it can)
        self.set_aside: list[str] = []  # corrupt files renamed at start
        self.store_id = ""
        self.incidents: dict[str, Incident] = {}
        self._by_identity: dict[str, str] = {}
        self._by_group: dict[tuple[str, str], str] = {}
        self.reopen()

    @property
    def available(self) -> bool:
        return self._db is not None

    def reopen(self) -> bool:
        """Open the store file (again); a file SQLite cannot read is set aside and a new one
        started. True when the store can accept."""
        self._close()
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._close()
            if not any(words in str(exc) for words in _CORRUPT):
                self._unavailable(exc)
                return False
            self._set_aside(exc)
            try:
                self._open()
            except (sqlite3.Error, OSError) as again:
                self._close()
                self._unavailable(again)
                return False
        except OSError as exc:
            self._close()
            self._unavailable(exc)
            return False
        if self.error:
            log.warning("The alert store %s accepts alerts again.", self.path)
        self.error = ""
        return True

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # busy timeout 0.1 s: a lock held by another process must not stall the event loop;
        # the batch fails and its senders get 503 (they retry).
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=0.1)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        columns = {r[1] for r in db.execute("PRAGMA table_info(alerts)")}
        for column, sql in _MIGRATIONS.items():
            if column not in columns:
                db.execute(sql)
                if column == "delivery_id":  # episodes of a store from before they were kept
                    db.execute("INSERT OR IGNORE INTO episodes SELECT identity, json_extract(alert, '$.episode'), "
                               "incident_id FROM alerts WHERE incident_id IS NOT NULL")
        self._legacy_raw = "raw" in columns
        row = db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        if row is None:
            self.store_id = str(uuid.uuid4())
            db.execute("INSERT INTO meta VALUES ('store_id', ?)", (self.store_id,))
        else:
            self.store_id = row[0]
        self._load_memory()

    def _set_aside(self, exc: BaseException) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        moved = []
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                dst = self.path.with_name(f"{self.path.name}.corrupt-{stamp}{suffix}")
                src.rename(dst)
                moved.append(str(dst))
        self.set_aside += moved[:1]
        log.error("#### THE ALERT STORE %s CANNOT BE READ (%s). It was set aside as %s (kept, not deleted: "
                  "alerts accepted before may be in it) and a new, empty store was started. Incidents opened "
                  "before are not known to this store: their re-deliveries may open new incidents. ####",
                  self.path, exc, ", ".join(moved) or "(nothing to move)")

    def _unavailable(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self.error:
            log.error("The alert store %s cannot accept alerts (%s); every delivery gets 503 until it can.",
                      self.path, message)
        self.error = message

    def _close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None

    def _fault(self, exc: BaseException) -> None:
        """A write failed. Memory is reloaded from what is on disk; when even that fails
        the store closes, and `reopen()` (the intake retries it) opens it again."""
        message = f"{type(exc).__name__}: {exc}"
        if message != self.error:
            log.error("The alert store %s refused a write (%s); those deliveries got 503.", self.path, message)
        self.error = message
        try:
            self._load_memory()
        except sqlite3.Error as again:
            log.error("The alert store %s cannot be read back (%s); it will be opened again.", self.path, again)
            self._close()

    def _load_memory(self) -> None:
        """Open incidents, indexed the two ways an alert can belong to one."""
        assert self._db is not None
        incidents: dict[str, Incident] = {}
        self.incidents, self._by_identity, self._by_group = incidents, {}, {}
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
        """Run what has queued, commit it in a worker thread, settle it; again while more came.
        Every job is settled, whatever fails."""
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    results = await self._flush_batch(batch)
                except BaseException as exc:  # a bug or cancellation: the requests still get an answer
                    _settle([(f, _JobFailed(exc)) for _, f in batch])
                    raise
                _settle(list(zip((f for _, f in batch), results)))
        finally:
            self._flushing = None

    async def _flush_batch(self, batch: list[_Job]) -> list[Any]:
        if self._db is None:
            return [_JobFailed(self._unavailable_error())] * len(batch)
        results = self._run_batch(batch)
        if any(isinstance(r, _JobFailed) for r in results) and len(batch) > 1 and self._db is not None:
            # One job failed and took the transaction with it: run each on its own, so the
            # others are stored and only the bad one fails.
            results = []
            for job in batch:
                one = self._run_batch([job])
                if not isinstance(one[0], _JobFailed):
                    one = await self._commit(one)
                results += one
            return results
        if not any(isinstance(r, _JobFailed) for r in results):
            results = await self._commit(results)
        return results

    def _unavailable_error(self) -> TemporarilyUnavailable:
        return TemporarilyUnavailable(f"the alert store cannot accept alerts now ({self.error or 'closed'}); retry")

    def _run_batch(self, batch: list[_Job]) -> list[Any]:
        """Run the jobs in one open transaction (committed by `_commit`)."""
        db = self._db
        if db is None:
            return [_JobFailed(self._unavailable_error())] * len(batch)
        results: list[Any] = []
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # locked by another process, read-only, I/O error
            self._fault(exc)
            return [_JobFailed(self._unavailable_error())] * len(batch)
        for fn, _ in batch:
            try:
                results.append(fn(db))
            except Exception as exc:
                with _quiet():
                    db.execute("ROLLBACK")
                self._fault(exc)
                return [_JobFailed(self._unavailable_error())] * len(batch)
        return results

    async def _commit(self, results: list[Any]) -> list[Any]:
        db = self._db
        assert db is not None
        try:
            await asyncio.to_thread(db.execute, "COMMIT")
        except sqlite3.Error as exc:  # disk full, I/O error: nobody in this batch is stored
            if db.in_transaction:
                with _quiet():
                    db.execute("ROLLBACK")
            self._fault(exc)  # forget what the lost batch decided
            return [_JobFailed(self._unavailable_error())] * len(results)
        if self.error:
            log.warning("The alert store %s accepts alerts again.", self.path)
            self.error = ""
        return results

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((fn, future))
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())
        return await future

    async def probe(self) -> str:
        """Write one row and commit it: "" when the store accepts, else why not."""
        if self._db is None:
            return self.error or "closed"
        try:
            await self._submit(lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (_now(),)))
        except TemporarilyUnavailable:
            return self.error or "unavailable"
        return ""

    async def aclose(self) -> None:
        while self._flushing is not None:
            with _quiet():
                await asyncio.shield(self._flushing)
        self._close()

    # --- accepting alerts -------------------------------------------------------------------

    async def accept(self, routed: list[tuple[Alert, Route | None, str]], raw: bytes, source: str) -> list[Decision]:
        """Decide and store every alert of one delivery, durably, in one transaction.
        `routed` holds each alert, its route and its JSON (serialised by the caller, so an
        alert that cannot be written is the sender's 4xx, never a store fault)."""
        if self._db is None:
            raise self._unavailable_error()
        return await self._submit(lambda db: self._accept(db, routed, raw, source))

    def _accept(self, db: sqlite3.Connection, routed: list[tuple[Alert, Route | None, str]], raw: bytes,
                source: str) -> list[Decision]:
        received = datetime.now(timezone.utc)
        out: list[Decision] = []
        undo: list[Callable[[], None]] = []
        delivery_id = db.execute("INSERT INTO deliveries (received_at, source, body) VALUES (?,?,?)",
                                 (received.isoformat(), source, raw)).lastrowid
        try:
            for alert, route, alert_json in routed:
                out.append(self._decide(db, alert, route, alert_json, delivery_id, received, undo))
        except Exception:
            for step in reversed(undo):  # keep memory as the (rolled back) database has it
                step()
            raise
        return out

    def _decide(self, db: sqlite3.Connection, alert: Alert, route: Route | None, alert_json: str,
                delivery_id: int | None, received: datetime, undo: list[Callable[[], None]]) -> Decision:
        incident_id = self._by_identity.get(alert.identity)
        outcome: Outcome
        held = self.incidents.get(incident_id) if incident_id else None
        if held is None or not {f"{alert.identity}|firing|{alert.episode}",
                                f"{alert.identity}|resolved|{alert.episode}"} & held.seen:
            # Was this very firing (identity and episode) in an incident, open or closed? Then it
            # belongs there: a re-delivery after the run ended (Alertmanager's repeat_interval),
            # or an old firing re-sent while a newer one of the alert is open.
            row = db.execute("SELECT incident_id FROM episodes WHERE identity=? AND episode=?",
                             (alert.identity, alert.episode)).fetchone()
            if row is not None:
                incident_id = row[0]
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
                first = json.loads(alert_json)
                first.pop("raw", None)
                inc = Incident(incident_id, route.service, alert.group_key, route.rule, route, first,
                               received.isoformat())
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
        if incident_id is not None and not repeat:  # a repeat's episode is recorded already
            db.execute("INSERT OR IGNORE INTO episodes VALUES (?,?,?)", (alert.identity, alert.episode, incident_id))
        legacy_column, legacy_value = (", raw", ", X''") if self._legacy_raw else ("", "")  # older stores
        cur = db.execute(
            "INSERT INTO alerts (received_at, source, identity, status, outcome, incident_id, rule, repeat, alert, "
            f"delivery_id, delivered_at{legacy_column}) VALUES (?,?,?,?,?,?,?,?,?,?,?{legacy_value})",
            (received.isoformat(), alert.source, alert.identity, alert.status, outcome, incident_id,
             route.rule if route else None, int(repeat), alert_json, delivery_id,
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
                              "WHERE delivered_at IS NULL AND dead_at IS NULL ORDER BY seq LIMIT ?",
                              (limit,)).fetchall()
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

    async def dead(self, seqs: list[int], error: str) -> None:
        """Prefect refused these for good: kept as dead letters, no longer retried."""
        at = _now()
        await self._submit(lambda db: db.executemany(
            "UPDATE alerts SET dead_at=?, attempts=attempts+1, last_error=? WHERE seq=?",
            [(at, error[:500], s) for s in seqs]))

    async def close_incidents(self, incident_ids: list[str]) -> None:
        at = _now()

        def write(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE incidents SET closed_at=? WHERE incident_id=?", [(at, i) for i in incident_ids])
            for i in incident_ids:
                self._forget(i)
        await self._submit(write)

    # --- reading (own connections; WAL readers do not block the writer) -----------------------

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=1)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        out = {"queued": 0}
        for outcome, n in self._read("SELECT outcome, count(*) FROM alerts GROUP BY outcome"):
            out[outcome] = n
        out["queued"] = self._read("SELECT count(*) FROM alerts WHERE delivered_at IS NULL AND dead_at IS NULL")[0][0]
        out["accepted"] = sum(v for k, v in out.items() if k != "queued")
        out["dead_letters"] = self._read("SELECT count(*) FROM alerts WHERE dead_at IS NOT NULL")[0][0]
        out["deliveries"] = self._read("SELECT count(*) FROM deliveries")[0][0]
        out["open_incidents"] = len(self.incidents)
        return out

    def dead_letters(self, limit: int = 20) -> list[dict[str, Any]]:
        return read_dead_letters(self.path, limit)


def read_dead_letters(path: Path, limit: int = 100) -> list[dict[str, Any]]:
    """The alerts Prefect refused for good, newest first (read-only; for /healthz and the CLI)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    try:
        rows = conn.execute("SELECT seq, received_at, source, identity, status, incident_id, dead_at, attempts, "
                            "last_error FROM alerts WHERE dead_at IS NOT NULL ORDER BY seq DESC LIMIT ?",
                            (limit,)).fetchall()
    finally:
        conn.close()
    keys = ("seq", "received_at", "source", "identity", "status", "incident_id", "dead_at", "attempts", "error")
    return [dict(zip(keys, r)) for r in rows]


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


class _quiet:
    """`with _quiet():` a cleanup step whose own failure must not hide the first one."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)


def _seen_key(alert: Alert) -> str:
    return f"{alert.identity}|{alert.status}|{alert.episode}"
