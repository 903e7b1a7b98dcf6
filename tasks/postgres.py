"""PostgreSQL: stop and allow writes, integrity checks, checksums, dumps, restores, the swap.

Every connection has a connect_timeout and a statement_timeout (from the database target
block); pg_dump and pg_restore get the credentials through PG* environment variables, never
on a command line. Mutating steps take their operation from the approved plan, check the
world before they act, and never retry. sevflow never drops a database.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from prefect import get_run_logger
from psycopg import sql

from sevflow.blocks.database import DatabaseTarget
from sevflow.errors import BackupIntegrityError, DatabaseError, DriftError, PreflightError
from sevflow.models import (
    AllowWrites,
    Assessment,
    BackupRef,
    CheckResult,
    DatabaseSpec,
    GapRows,
    IntegrityCheck,
    MigrationRollback,
    Precondition,
    RestoreResult,
    RestoreToScratch,
    StopWrites,
    SwapDatabase,
    SwapResult,
    TableSum,
    Verification,
    WriteState,
    utcnow,
)
from sevflow.tasks.common import step
from sevflow.tasks import s3

CHUNK_ROWS = 1_000_000
"""Width of a checksum chunk, in key values: enough to say where two copies differ."""

ROW_HASH = "('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint"
"""A row's 60-bit hash: summed as numeric, order-independent, one streaming pass."""


# --- connections and binaries ---------------------------------------------------------------


def _target(block: str) -> DatabaseTarget:
    return DatabaseTarget.for_name(block)


@contextmanager
def connect(block: str | DatabaseTarget, database: str | None = None, *, read_only: bool = False) -> Iterator[psycopg.Connection]:
    """A connection (autocommit) to the maintenance database, or `database` on the same server."""
    target = _target(block) if isinstance(block, str) else block
    try:
        conn = psycopg.connect(**target.conninfo(database), autocommit=True)
    except psycopg.OperationalError as exc:
        where = f"database {database!r} on {target.server()}" if database else target.server()
        raise PreflightError(f"Cannot reach {where}: {str(exc).strip().splitlines()[0]}. Check the server is up and "
                             f"the DSN in the database target block; nothing was changed.") from exc
    try:
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
        yield conn
    finally:
        conn.close()


def pg_binary(name: str) -> str:
    """`pg_dump`/`pg_restore` on PATH, else the newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise PreflightError(f"{name} not found: install the PostgreSQL client (apt install postgresql-client).")
    return candidates[-1]


def _run(args: list[str], env: dict[str, str], timeout: float, what: str, cwd: str | None = None) -> str:
    done = subprocess.run(args, env=dict(os.environ) | env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd)
    if done.returncode != 0:
        raise DatabaseError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return done.stdout


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _log() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a run (bench, CLI): the module logger
        import logging

        return logging.getLogger("sevflow.tasks.postgres")


# --- reading ------------------------------------------------------------------------------


def write_state_now(block: str, database: str, roles: list[str]) -> WriteState:
    with connect(block) as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if row is None:
            return WriteState(database=database, exists=False)
        settings = conn.execute("SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = %s AND setrole = 0",
                                (row[0],)).fetchone()
        read_only = bool(settings and "default_transaction_read_only=on" in (settings[0] or []))
        logins = dict(conn.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", (roles,)).fetchall())
        missing = [r for r in roles if r not in logins]
        if missing:
            raise PreflightError(f"Application role(s) {', '.join(missing)} do not exist on the server: fix app_roles "
                                 "in the database target block. Nothing was changed.")
        sessions = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                                "AND backend_type = 'client backend'", (database,)).fetchone()[0]
    return WriteState(database=database, read_only_default=read_only, roles_login=logins, sessions=sessions)


@step("check whether the database takes writes", timeline=False)
def write_state(spec: DatabaseSpec) -> WriteState:
    """Read-only: the live database's read-only default, the app roles' LOGIN, its sessions."""
    return write_state_now(spec.block, spec.database, spec.app_roles)


def _qualified(table: str) -> sql.Composable:
    schema, _, name = table.rpartition(".")
    return sql.SQL(".").join([sql.Identifier(schema or "public"), sql.Identifier(name)])


def run_checks(conn: psycopg.Connection, checks: list[IntegrityCheck], timestamp_columns: dict[str, str]) -> list[CheckResult]:
    results = []
    for check in checks:
        body = sql.SQL(check.sql.strip().rstrip(";"))  # type: ignore[arg-type]  # the block's own SQL
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            columns = [c.name for c in conn.execute(sql.SQL("SELECT * FROM ({}) AS bad LIMIT 0").format(body)).description or []]
            column = timestamp_columns.get(check.table) or timestamp_columns.get(check.table.rpartition(".")[2])
            if column and column in columns:
                count, first = conn.execute(sql.SQL("SELECT count(*), min(bad.{}) FROM ({}) AS bad").format(
                    sql.Identifier(column), body)).fetchone()
            else:
                count, first = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS bad").format(body)).fetchone()[0], None
        if isinstance(first, datetime) and first.tzinfo is None:
            first = first.replace(tzinfo=timezone.utc)
        results.append(CheckResult(name=check.name, table=check.table, bad_rows=count,
                                   first_bad_at=first if isinstance(first, datetime) else None))
    return results


def user_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_qualified(t))).fetchone()[0]
            for t in user_tables(conn)}


@step("ASSESS scope", milestone="Investigation started")
def assess_scope(spec: DatabaseSpec) -> Assessment:
    """Read-only: run the integrity checks on the live database, count every table's rows,
    tell when the corruption started (the oldest write among the bad rows, where the table has
    a timestamp column), and list the backups, newest first."""
    with connect(spec.block, spec.database, read_only=True) as conn:
        checks = run_checks(conn, spec.integrity_checks, spec.timestamp_columns)
        counts = row_counts(conn)
    started = min((c.first_bad_at for c in checks if c.first_bad_at), default=None)
    backups = s3.find_backups_now(spec)
    _log().info("Integrity checks: %s; corruption started %s; %d backups",
                ", ".join(f"{c.name}={c.bad_rows}" for c in checks) or "none configured",
                started.isoformat() if started else "unknown", len(backups))
    return Assessment(database=spec.database, checks=checks, row_counts=counts, started_at=started,
                      backups=backups, assessed_at=utcnow())


def _integer_key(conn: psycopg.Connection, table: str) -> str | None:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (table,)).fetchall()
    if len(rows) == 1 and rows[0][1] in ("smallint", "integer", "bigint"):
        return rows[0][0]
    return None


def table_sums(conn: psycopg.Connection) -> list[TableSum]:
    """Every user table's row count and checksum; by chunks of the integer primary key where
    there is one (one pass: the whole-table sums are the chunks' sums)."""
    out = []
    for table in user_tables(conn):
        key = _integer_key(conn, table)
        if key:
            rows = conn.execute(sql.SQL(
                "SELECT ({k} / {w}) * {w} AS chunk, count(*), coalesce(sum(" + ROW_HASH + "), 0) "
                "FROM {t} AS t GROUP BY 1 ORDER BY 1").format(
                k=sql.Identifier(key), w=sql.Literal(CHUNK_ROWS), t=_qualified(table))).fetchall()
            chunks = {str(c): [str(n), str(s)] for c, n, s in rows}
            out.append(TableSum(table=table, rows=sum(n for _, n, _ in rows), checksum=str(sum(s for _, _, s in rows)),
                                key=key, chunks=chunks))
        else:
            n, s = conn.execute(sql.SQL("SELECT count(*), coalesce(sum(" + ROW_HASH + "), 0) FROM {} AS t").format(
                _qualified(table))).fetchone()
            out.append(TableSum(table=table, rows=n, checksum=str(s)))
    return out


@step("VERIFY data")
def verify_restored(spec: DatabaseSpec, restored: str, backup_taken_at: datetime) -> Verification:
    """Read-only: the integrity checks on the restored copy; every table's rows and checksum
    in the live database and the restored copy; the gap (rows written in the live database
    after the backup was taken, by each table's timestamp column: what a swap would lose)."""
    with connect(spec.block, restored, read_only=True) as conn:
        checks = run_checks(conn, spec.integrity_checks, spec.timestamp_columns)
        restored_sums = table_sums(conn)
    with connect(spec.block, spec.database, read_only=True) as conn:
        live_sums = table_sums(conn)
        gap = []
        for table, column in sorted(spec.timestamp_columns.items()):
            n, newest = conn.execute(sql.SQL("SELECT count(*), max({c}) FROM {t} WHERE {c} > %s").format(
                c=sql.Identifier(column), t=_qualified(table)), (backup_taken_at,)).fetchone()
            if isinstance(newest, datetime) and newest.tzinfo is None:
                newest = newest.replace(tzinfo=timezone.utc)
            gap.append(GapRows(table=table, column=column, rows=n, newest=newest if isinstance(newest, datetime) else None))
    result = Verification(live=spec.database, restored=restored, backup_taken_at=backup_taken_at, checks=checks,
                          live_tables=live_sums, restored_tables=restored_sums, gap=gap, verified_at=utcnow())
    _log().info("Restored copy %s: integrity %s; tables differing from live: %s; gap %d rows",
                restored, "clean" if result.clean else "NOT clean", ", ".join(result.differing_tables()) or "none",
                result.gap_rows)
    return result


def database_exists(block: str, name: str) -> bool:
    with connect(block) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def databases_missing(pre: Precondition) -> list[str]:
    """For the kit's precondition check: the databases the plan needs that are gone."""
    assert pre.database is not None
    return [name for name in pre.present if not database_exists(pre.database.block, name)]


# --- changing -----------------------------------------------------------------------------


@step("STOP writes", mutating=True)
def stop_writes(op: StopWrites) -> WriteState:
    """Make the database read-only so it holds: read-only by default for new sessions, the
    application roles barred from logging in (a client that turns read-only off has no session
    to write with), every other client session of the database ended (they began read-write).
    Idempotent: a database already stopped only has its sessions ended again."""
    with connect(op.block) as conn:
        with conn.transaction():
            for role in op.roles:
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
            conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(sql.Identifier(op.database)))
        ended = conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                             (op.database,)).fetchone()[0]
    _log().info("Writes stopped on %s: read-only default, %s barred from logging in, %d sessions ended",
                op.database, ", ".join(op.roles) or "no roles", ended)
    return write_state_now(op.block, op.database, op.roles)


@step("allow writes again", mutating=True)
def allow_writes(op: AllowWrites) -> WriteState:
    """Undo STOP writes on the database now named `op.database`: its read-only default reset,
    the roles barred by this run may log in again."""
    with connect(op.block) as conn, conn.transaction():
        conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(sql.Identifier(op.database)))
        for role in op.roles:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
    _log().info("Writes allowed again on %s (%s may log in)", op.database, ", ".join(op.roles) or "no roles")
    return write_state_now(op.block, op.database, op.roles)


@step("BACKUP current state", mutating=True)
def backup_current_state(spec: DatabaseSpec, run_key: str, taken_at: datetime) -> BackupRef:
    """pg_dump -Fc of the live database as it is now (corrupted or not, for forensics),
    uploaded under a new key with its sha256 beside it. Never overwrites: the key is this
    run's, and an existing key is checked first (a replay finds its own upload and returns it)."""
    target = _target(spec.block)
    name = f"{spec.database}-{taken_at:%Y%m%dT%H%M%SZ}-forensic-{run_key[:8]}.dump"
    with tempfile.TemporaryDirectory(prefix="sevflow-dump-") as tmp:
        path = Path(tmp) / name
        _run([pg_binary("pg_dump"), "-Fc", "-f", str(path)], target.libpq_env(spec.database),
             spec.command_timeout_seconds, f"pg_dump of {spec.database}")
        digest = sha256_of(path)
        if spec.s3_bucket_block:
            return s3.put_new_backup(spec, path, name, digest, taken_at)
        if spec.local_backup_dir:
            return s3.keep_local_backup(spec, path, name, digest, taken_at)
    raise PreflightError(f"Database target {spec.block!r} names no backup place: set s3_bucket_block or local_backup_dir.")


def _comment(conn: psycopg.Connection, database: str) -> str | None:
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                       (database,)).fetchone()
    return row[0] if row else None


def check_backup(op: RestoreToScratch, path: Path) -> tuple[str, int]:
    """The archive's sha256 against the recorded one, and its table of contents: refused if
    either fails. Returns (sha256, entries in the table of contents)."""
    backup = op.backup
    if not backup.sha256:
        raise BackupIntegrityError(f"Backup {backup.label} has no recorded sha256: refused; nothing was restored.")
    actual = sha256_of(path)
    if actual != backup.sha256:
        raise BackupIntegrityError(f"Backup {backup.label} has sha256 {actual}, not the recorded {backup.sha256}: "
                                   "refused; nothing was restored. Name another backup (backup=...).")
    try:
        toc = _run([pg_binary("pg_restore"), "-l", str(path)], {}, 600, f"pg_restore -l of {backup.key}")
    except DatabaseError as exc:
        raise BackupIntegrityError(f"Backup {backup.label}: its table of contents does not read ({exc}); refused; "
                                   "nothing was restored.") from exc
    entries = [line for line in toc.splitlines() if line and not line.startswith(";")]
    if not any(" TABLE DATA " in line for line in entries):
        raise BackupIntegrityError(f"Backup {backup.label} holds no table data; refused; nothing was restored.")
    return actual, len(entries)


def restore_archive(target: DatabaseTarget, path: Path, scratch: str, jobs: int, marker: str, timeout: float) -> None:
    """CREATE DATABASE scratch (marked with `marker`), pg_restore -j into it."""
    with connect(target) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(scratch), sql.Literal(marker)))
    _run([pg_binary("pg_restore"), "-j", str(jobs), "--exit-on-error", "-d", scratch, str(path)],
         target.libpq_env(scratch), timeout, f"pg_restore into {scratch}")


@step("RESTORE from backup", mutating=True)
def restore_to_scratch(op: RestoreToScratch) -> RestoreResult:
    """Fetch the approved backup, refuse it if its sha256 or table of contents do not check
    out, then restore it into the new database `op.scratch` with `pg_restore -j`. The live
    database is not touched. A scratch database of this run's restore is reused (replay); any
    other database of that name stops the step."""
    target = _target(op.block)
    marker = f"sevflow restore {op.run_key} of {op.backup.key} ({op.backup.sha256})"
    with connect(target) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (op.scratch,)).fetchone():
            if _comment(conn, op.scratch) != marker + " complete":
                raise DriftError(f"A database named {op.scratch} exists and is not this run's complete restore: "
                                 "nothing was changed. Look at it, then run the procedure again.")
            return RestoreResult(scratch=op.scratch, backup=op.backup, sha256=op.backup.sha256, toc_entries=0, seconds=0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sevflow-restore-") as tmp:
        path = s3.fetch_backup(op.backup, Path(tmp))
        digest, entries = check_backup(op, path)
        _log().info("Backup %s checks out (sha256 %s, %d entries); restoring into %s with %d jobs",
                    op.backup.key, digest[:12], entries, op.scratch, op.jobs)
        restore_archive(target, path, op.scratch, op.jobs, marker, target.command_timeout_seconds)
    with connect(target) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(op.scratch), sql.Literal(marker + " complete")))
    return RestoreResult(scratch=op.scratch, backup=op.backup, sha256=digest, toc_entries=entries,
                         seconds=round(time.monotonic() - started, 3))


@step("swap the restored database in", mutating=True, milestone="Fix deployed")
def swap_database(op: SwapDatabase) -> SwapResult:
    """In one transaction: the live database renamed to `keep_as` (kept), the restored one to
    the live name; the sessions of both ended just before. Idempotent: done already (the
    kept name exists, the restored name is gone) returns. A rename blocked by a session that
    slipped in rolls back whole and is tried again."""
    with connect(op.block) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                            ([op.live, op.restored, op.keep_as],)).fetchall()}
        if op.keep_as in names and op.restored not in names and op.live in names:
            return SwapResult(live=op.live, kept_as=op.keep_as, swapped_at=utcnow())
        if names != {op.live, op.restored}:
            raise DriftError(f"Swap refused, nothing was changed: expected databases {op.live} and {op.restored} "
                             f"and no {op.keep_as}; found {', '.join(sorted(names)) or 'none'}.")
        last: Exception | None = None
        for _attempt in range(10):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ANY(%s) "
                         "AND pid <> pg_backend_pid()", ([op.live, op.restored],))
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(op.live), sql.Identifier(op.keep_as)))
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(op.restored), sql.Identifier(op.live)))
                break
            except psycopg.errors.ObjectInUse as exc:  # a session reconnected between the two: try again
                last = exc
                time.sleep(0.2)
        else:
            raise DatabaseError(f"Swap not made, nothing was changed: sessions kept reconnecting ({last}).")
    _log().info("Swapped: %s is now the restored copy; the previous live database is kept as %s", op.live, op.keep_as)
    return SwapResult(live=op.live, kept_as=op.keep_as, swapped_at=utcnow())


@step("show migration status", timeline=False)
def migration_status(spec: DatabaseSpec, phase: str = "before") -> str:
    """Read-only: the migration tool's status output (`phase` tells the readings of one run apart)."""
    if not spec.migration_status_command:
        raise PreflightError(f"Database target {spec.block!r} names no migration tool or status command.")
    target = _target(spec.block)
    return _run(["sh", "-c", spec.migration_status_command], target.libpq_env(spec.database) | _dsn_env(target, spec.database),
                300, "migration status", cwd=spec.migration_cwd).strip()


def _dsn_env(target: DatabaseTarget, database: str) -> dict[str, str]:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(target.dsn.get_secret_value())
    return {"DATABASE_URL": urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))}


@step("roll back the migration", mutating=True, milestone="Fix deployed")
def roll_back_migration(op: MigrationRollback) -> str:
    """Run the approved rollback command of the migration tool (DATABASE_URL and PG* set)."""
    target = _target(op.block)
    spec = target.spec(op.block)
    return _run(["sh", "-c", op.command], target.libpq_env(spec.database) | _dsn_env(target, spec.database)
                | {"SEVFLOW_MIGRATION": op.migration}, op.timeout_seconds, f"migration rollback of {op.migration}",
                cwd=op.cwd).strip()
