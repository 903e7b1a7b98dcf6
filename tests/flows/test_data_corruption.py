"""Data Corruption and Database Rollback on the real PostgreSQL, backups in moto's S3 server.

Each test makes its own database (a real `orders` table), its own application role and its
own S3 prefix, injects corruption into real rows, drives the run through its gates on the
session's Prefect server and worker, and compares full snapshots of the world: every row of
every table, whether the database takes writes, the databases on the server, the backups.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import boto3
import psycopg
import pytest

from sevflow.gate import answer_gate
from tests.conftest import read_run, start, wait_final
from tests.support.stack import PG_DSN
from tests.support.wait import until

BUCKET = "sevflow-backups"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    _s3(url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def _s3(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1")


def pg(database: str | None = None, **kwargs: Any) -> psycopg.Connection:
    dsn = PG_DSN if database is None else PG_DSN.rsplit("/", 1)[0] + f"/{database}"
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, **kwargs)


class Db:
    """One production database for a test: its table, app role, backups, blocks and policy."""

    def __init__(self, s3_url: str, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"sevflow_dc_{tag}"
        self.role = f"sevflow_app_{tag}"
        self.block = f"db-{tag}"
        self.bucket_block = f"s3-{tag}"
        self.policy = f"policy-db-{tag}"
        self.prefix = f"backups/{self.name}"
        self.s3_url = s3_url
        self.s3 = _s3(s3_url)
        self.tmp = tmp
        with pg() as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
            conn.execute(f'CREATE ROLE "{self.role}" LOGIN')
        with pg(self.name) as conn:
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL, "
                         "updated_at timestamptz NOT NULL DEFAULT now())")
            conn.execute("CREATE TABLE customers (name text PRIMARY KEY, email text)")
            conn.execute("INSERT INTO orders (customer, amount, updated_at) SELECT 'c' || (i % 17), i * 1.25, "
                         "now() - interval '2 days' FROM generate_series(1, 500) i")
            conn.execute("INSERT INTO customers SELECT 'c' || i, 'c' || i || '@example.com' FROM generate_series(0, 16) i")
            conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{self.role}"')
            conn.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{self.role}"')

    # --- the world ------------------------------------------------------------------------

    def rows(self, database: str | None = None) -> dict[str, list[tuple]]:
        with pg(database or self.name) as conn:
            return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("orders", "customers")}

    def write_state(self) -> dict[str, Any]:
        with pg() as conn:
            settings = conn.execute("SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                                    "WHERE d.datname = %s AND s.setrole = 0", (self.name,)).fetchone()
            login = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (self.role,)).fetchone()[0]
        return {"settings": settings[0] if settings else None, "app_role_login": login}

    def databases(self) -> list[str]:
        with pg() as conn:
            return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                               (self.name + "%",)).fetchall()]

    def backups(self) -> dict[str, bytes]:
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=self.prefix).get("Contents", [])
        return {o["Key"]: self.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}

    def world(self) -> dict[str, Any]:
        return {"rows": self.rows(), "writes": self.write_state(), "databases": self.databases(),
                "backups": self.backups()}

    # --- backups, corruption ------------------------------------------------------------------

    def take_backup(self, label: str, taken_at: datetime, sha256: str | None = None) -> str:
        """A backup as an ordinary backup job leaves it: pg_dump -Fc, uploaded with its sha256."""
        path = self.tmp / f"{label}.dump"
        subprocess.run(["pg_dump", "-Fc", "-f", str(path), "-h", "127.0.0.1", "-U", "postgres", self.name],
                       check=True, timeout=120)
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        key = f"{self.prefix}/{self.name}-{taken_at:%Y%m%dT%H%M%SZ}-{label}.dump"
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata={"taken-at": taken_at.isoformat()})
        self.s3.put_object(Bucket=BUCKET, Key=key + ".sha256", Body=f"{sha256 or digest}  {label}.dump\n".encode())
        return key

    def corrupt(self) -> None:
        """New good rows written after the backup, then a bad deploy negates 20 amounts."""
        with pg(self.name) as conn:
            conn.execute("INSERT INTO orders (customer, amount, updated_at) SELECT 'late', i, now() - interval '1 hour' "
                         "FROM generate_series(1, 7) i")
            conn.execute("UPDATE orders SET amount = -amount, updated_at = now() - interval '30 minutes' WHERE id <= 20")

    def save_blocks(self, **overrides: Any) -> None:
        from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

        from sevflow.blocks import ApprovalPolicy, ApprovalRule, DatabaseTarget
        from sevflow.models import IntegrityCheck

        S3Bucket(bucket_name=BUCKET, credentials=AwsCredentials(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=self.s3_url))).save(self.bucket_block, overwrite=True)
        fields: dict[str, Any] = dict(
            service=f"shop-{self.name[-8:]}", dsn=PG_DSN, database=self.name, app_roles=[self.role],
            integrity_checks=[IntegrityCheck(name="no negative amounts", table="orders",
                                             sql="SELECT * FROM orders WHERE amount < 0")],
            timestamp_columns={"orders": "updated_at"}, s3_bucket_block=self.bucket_block, backup_prefix=self.prefix,
            restore_jobs=2,
        )
        DatabaseTarget(**(fields | overrides)).save(self.block, overwrite=True)
        ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=["alice", "bob"])]).save(self.policy, overwrite=True)

    def drop(self) -> None:
        with pg() as conn:
            for name in self.databases():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{self.role}"')


@pytest.fixture
def db(s3_endpoint: str, stack, tmp_path: Path) -> Iterator[Db]:
    d = Db(s3_endpoint, tmp_path)
    try:
        yield d
    finally:
        d.drop()


@pytest.fixture
def corrupted(db: Db) -> tuple[Db, dict[str, list[tuple]], str]:
    """Backups taken 3 days and 1 day ago (good), corruption 30 minutes ago, a backup 10 minutes
    ago (corrupted): returns the database, the rows of the good backup and its key."""
    now = datetime.now(timezone.utc)
    db.take_backup("older", now - timedelta(days=3))
    good_rows = db.rows()
    good = db.take_backup("nightly", now - timedelta(days=1))
    db.corrupt()
    db.take_backup("recent", now - timedelta(minutes=10))
    db.save_blocks()
    return db, good_rows, good


def at_gate(run_id: str, gate: str, timeout: float = 180) -> Any:
    """Until the run waits at `gate` (its first wait); fail if it ends first."""
    def check() -> Any:
        run = read_run(run_id)
        state = run.state
        if state and state.type.value == "PAUSED" and str(state.state_details.pause_key) == f"{gate}-answer-1":
            return run
        if state and state.is_final():
            raise AssertionError(f"run ended before gate {gate}: {state.name} {state.message}")
        return None
    return until(check, timeout=timeout, what=f"the run to wait at gate {gate}")


def postmortem(run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    return next(a.data for a in arts if a.key and a.key.endswith("-postmortem") and not a.key.endswith("-incident-postmortem"))


def app_can_write(db: Db) -> bool:
    try:
        with pg(db.name, user=db.role) as conn:
            conn.execute("SET default_transaction_read_only = off")
            with conn.transaction(force_rollback=True):
                conn.execute("INSERT INTO orders (customer, amount) VALUES ('probe', 1)")
        return True
    except psycopg.Error:
        return False


# --- the full procedure ---------------------------------------------------------------------


def test_data_corruption_restores_the_last_good_backup_and_reports_the_gap(corrupted, worker) -> None:
    db, good_rows, good_key = corrupted
    corrupted_rows = db.rows()
    before_backups = db.backups()
    run_id = start("data-corruption", service=db.block, policy=db.policy, severity="SEV-1")

    at_gate(run_id, "stop-writes")
    answer_gate(run_id, "approve", "alice", "stop the bleeding")
    at_gate(run_id, "restore")
    assert db.write_state() == {"settings": ["default_transaction_read_only=on"], "app_role_login": False}
    answer_gate(run_id, "approve", "alice", "nightly is before the bad deploy")
    at_gate(run_id, "swap")
    answer_gate(run_id, "approve", "bob", "restored copy is clean")
    final = wait_final(run_id, timeout=180)
    assert final.state.type.value == "COMPLETED", final.state.message

    # The live name now holds exactly the good backup's data; writes are allowed again.
    assert db.rows() == good_rows
    assert db.write_state() == {"settings": None, "app_role_login": True}
    assert app_can_write(db)
    # The corrupted database is kept, read-only, byte for byte, under a new name.
    kept = [n for n in db.databases() if "_corrupt_" in n]
    assert len(kept) == 1 and db.rows(kept[0]) == corrupted_rows
    # Every backup is kept; one forensic dump was added, its sha256 beside it and true.
    after = db.backups()
    assert {k: v for k, v in after.items() if k in before_backups} == before_backups
    added = sorted(set(after) - set(before_backups))
    assert len(added) == 2 and added[0].endswith(".dump") and "-forensic-" in added[0]
    assert after[added[1]].decode().split()[0] == hashlib.sha256(after[added[0]]).hexdigest()

    # The restore took the backup before the corruption started; the gap is reported.
    report = final.state.result()
    assert report.restored_from == good_key
    assert report.gap_rows == 27  # 7 rows written after the backup + 20 corrupted since
    text = postmortem(run_id)
    from sevflow import markdown as md

    assert "Data-loss window" in text and "orders: 27 rows" in text and md.escape(report.kept_as) in text


# --- rejections leave the live data as it was ------------------------------------------------


def test_a_rejected_stop_writes_changes_nothing(corrupted, worker) -> None:
    db, _, _ = corrupted
    before = db.world()
    run_id = start("data-corruption", service=db.block, policy=db.policy)
    at_gate(run_id, "stop-writes")
    answer_gate(run_id, "reject", "alice", "it's the cache, not the database")
    final = wait_final(run_id)
    assert final.state.name == "Rejected"
    assert db.world() == before


def test_a_rejected_swap_leaves_the_live_data_and_allows_writes_once_a_person_says_so(corrupted, worker) -> None:
    db, _, _ = corrupted
    before = db.world()
    run_id = start("data-corruption", service=db.block, policy=db.policy)
    at_gate(run_id, "stop-writes")
    answer_gate(run_id, "approve", "alice", "stop")
    at_gate(run_id, "restore")
    answer_gate(run_id, "approve", "alice", "restore")
    at_gate(run_id, "swap")
    answer_gate(run_id, "reject", "bob", "the gap is too big, we repair by hand")
    at_gate(run_id, "allow-writes")
    assert db.rows() == before["rows"]
    assert db.write_state()["app_role_login"] is False  # still stopped until a person says so
    answer_gate(run_id, "approve", "bob", "repairing by hand, writes back on")
    final = wait_final(run_id)
    assert final.state.name == "Rejected", final.state.message
    after = db.world()
    assert after["rows"] == before["rows"] and after["writes"] == before["writes"]
    assert app_can_write(db)
    # Nothing lost: the restored copy stays for the people repairing by hand; every backup kept.
    assert [n for n in after["databases"] if n != db.name] == [n for n in after["databases"] if "_restore_" in n]
    assert set(before["backups"]) < set(after["backups"])


def test_a_writer_cannot_turn_read_only_off_and_a_rejected_restore_changes_no_data(corrupted, worker) -> None:
    db, _, _ = corrupted
    writer = pg(db.name, user=db.role)  # the application, connected before writes stop
    writer.execute("INSERT INTO orders (customer, amount) VALUES ('before-stop', 1) RETURNING id")
    before = db.world()
    run_id = start("data-corruption", service=db.block, policy=db.policy)
    at_gate(run_id, "stop-writes")
    answer_gate(run_id, "approve", "alice", "stop")
    at_gate(run_id, "restore")

    # Its session was ended; turning read-only off on a new one is impossible: it cannot log in.
    with pytest.raises(psycopg.OperationalError):
        writer.execute("SET default_transaction_read_only = off")
        writer.execute("INSERT INTO orders (customer, amount) VALUES ('after-stop', 1)")
    writer.close()
    assert not app_can_write(db)
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        pg(db.name, user=db.role).close()
    # Any other new session starts read-only.
    with pg(db.name) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("INSERT INTO orders (customer, amount) VALUES ('default', 1)")

    answer_gate(run_id, "reject", "bob", "not this backup")
    at_gate(run_id, "allow-writes")
    answer_gate(run_id, "reject", "bob", "keep it read-only while we look")
    final = wait_final(run_id)
    assert final.state.name == "Rejected"
    assert db.rows() == before["rows"]
    assert db.write_state() == {"settings": ["default_transaction_read_only=on"], "app_role_login": False}
    assert db.databases() == before["databases"]  # nothing restored


def test_a_backup_with_a_wrong_checksum_is_refused_before_any_restore(db: Db, worker) -> None:
    now = datetime.now(timezone.utc)
    db.take_backup("nightly", now - timedelta(days=1), sha256="0" * 64)
    db.corrupt()
    db.save_blocks()
    run_id = start("data-corruption", service=db.block, policy=db.policy)
    at_gate(run_id, "stop-writes")
    answer_gate(run_id, "approve", "alice", "stop")
    at_gate(run_id, "restore")
    rows = db.rows()
    answer_gate(run_id, "approve", "alice", "restore nightly")
    final = wait_final(run_id)
    assert final.state.type.value == "FAILED"
    assert "not the recorded " + "0" * 64 in final.state.message and "nothing was restored" in final.state.message
    assert db.databases() == [db.name]  # no scratch database was created
    assert db.rows() == rows


def test_sevflow_plan_shows_the_stop_writes_plan_and_changes_nothing(corrupted, stack) -> None:
    db, _, _ = corrupted
    before = db.world()
    shown = subprocess.run([sys.executable, "-m", "sevflow", "plan", "data-corruption", "--json", "--param",
                            f"service={db.block}", "--param", f"policy={db.policy}"],
                           capture_output=True, text=True, timeout=180, env=dict(os.environ) | stack.env(),
                           stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    [op] = data["plan"]["operations"]
    assert op == {"op": "stop-writes", "block": db.block, "database": db.name, "roles": [db.role],
                  "run_key": op["run_key"]}
    assert "NOLOGIN" in data["text"]
    assert db.world() == before


# --- database-rollback ----------------------------------------------------------------------


def test_database_rollback_restores_a_named_backup_with_the_same_steps(corrupted, worker) -> None:
    db, good_rows, good_key = corrupted
    run_id = start("database-rollback", service=db.block, policy=db.policy, backup=good_key.rsplit("/", 1)[1])
    for gate in ("stop-writes", "restore", "swap"):
        at_gate(run_id, gate)
        answer_gate(run_id, "approve", "alice", gate)
    final = wait_final(run_id, timeout=180)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert db.rows() == good_rows
    assert app_can_write(db)


def test_database_rollback_rolls_back_a_migration(db: Db, worker, tmp_path: Path) -> None:
    with pg(db.name) as conn:
        conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY)")
        conn.execute("INSERT INTO schema_migrations VALUES ('001_init'), ('002_add_discount')")
        conn.execute("ALTER TABLE orders ADD COLUMN discount numeric")
    db.save_blocks(
        migration_tool="command",
        migration_status_command="psql -Atc 'SELECT name FROM schema_migrations ORDER BY name'",
        migration_rollback_command=("psql -v ON_ERROR_STOP=1 -c \"ALTER TABLE orders DROP COLUMN discount\" "
                                    "-c \"DELETE FROM schema_migrations WHERE name = '{migration}'\""),
    )
    run_id = start("database-rollback", service=db.block, policy=db.policy, migration="002_add_discount")
    at_gate(run_id, "migration")
    with pg(db.name) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (2,)
    answer_gate(run_id, "approve", "alice", "the discount migration broke checkout")
    final = wait_final(run_id)
    assert final.state.type.value == "COMPLETED", final.state.message
    report = final.state.result()
    assert report.status_before == "001_init\n002_add_discount" and report.status_after == "001_init"
    with pg(db.name) as conn:
        columns = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'orders'").fetchall()]
    assert "discount" not in columns
