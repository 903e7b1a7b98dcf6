"""How long does sevflow's RESTORE step take, against plain `pg_restore -j` of the same dump?

    python bench/restore.py [--gb 1.0] [--jobs 2] [--keep]

On demand only (not a test). Everything on this machine, loopback only, on the PostgreSQL the
tests use (SEVFLOW_TEST_PG, default postgresql://postgres@127.0.0.1:5432/postgres):

1. a source database of at least `--gb` GB (two tables, so parallel jobs have work to share),
   dumped once with `pg_dump -Fc` into a local backup folder with its sha256 beside it;
2. baseline: `CREATE DATABASE` + `pg_restore -j N -d <db> <dump>` (what a person types);
3. sevflow: the `RESTORE from backup` step itself (`sevflow.tasks.postgres.restore_to_scratch`,
   a Prefect task, on a temporary Prefect server from `prefect_test_harness`) with the plan's
   operation for that backup: sha256 of the archive, `pg_restore -l`, `CREATE DATABASE`,
   `pg_restore -j N`, the completion mark.

Both restores are timed in the same run, `--rounds` times, alternating which goes first, wall clock; the ratio
sevflow / baseline is printed with the machine's load average before and after each. Every
database the bench made is dropped at the end (unless --keep).

Measured 2026-12-02 (1.13 GB source, 355 MB dump, -j 2, 3 rounds alternating which goes first,
load 8-10 from other engineers' tests): baseline 36.9 / 45.0 / 32.0 s, sevflow 34.3 / 43.9 /
38.3 s; medians 36.9 s vs 38.3 s, ratio 1.039 (goal <= 1.15).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_DSN = os.environ.get("SEVFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg(database: str | None = None) -> psycopg.Connection:
    dsn = PG_DSN if database is None else PG_DSN.rsplit("/", 1)[0] + f"/{database}"
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_source(name: str, gb: float) -> int:
    """Two tables, ~`gb` GB together; returns the database's size in bytes."""
    with pg() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    rows = int(gb * 1024**3 / 150 / 2) + 1  # ~157 bytes a row on disk measured: a little over `gb` GiB
    with pg(name) as conn:
        for table in ("events_a", "events_b"):
            conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, account int NOT NULL, amount numeric NOT NULL, "
                         "note text NOT NULL, updated_at timestamptz NOT NULL)")
            step = 2_000_000
            for start in range(1, rows + 1, step):
                end = min(rows, start + step - 1)
                conn.execute(f"INSERT INTO {table} SELECT i, i % 9973, (i % 100000) / 100.0, "
                             f"md5(i::text) || md5((i * 7)::text) || '-{table}', now() - (i % 86400) * interval '1 second' "
                             f"FROM generate_series({start}, {end}) i")
        conn.execute("VACUUM ANALYZE")
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    source, baseline_db = f"sevflow_bench_src_{tag}", f"sevflow_bench_plain_{tag}"
    made = [source, baseline_db]
    folder = Path(tempfile.mkdtemp(prefix="sevflow-bench-restore-"))
    from sevflow.tasks.postgres import pg_binary, sha256_of

    try:
        t = time.monotonic()
        size = make_source(source, args.gb)
        print(f"source database {source}: {size / 1e9:.2f} GB ({size / 1024**3:.2f} GiB) on disk, "
              f"made in {time.monotonic() - t:.0f} s")
        dump = folder / f"{source}.dump"
        t = time.monotonic()
        subprocess.run([pg_binary("pg_dump"), "-Fc", "-f", str(dump), "-d", PG_DSN.rsplit("/", 1)[0] + f"/{source}"],
                       check=True)
        digest = sha256_of(dump)
        (folder / (dump.name + ".sha256")).write_text(f"{digest}  {dump.name}\n")
        print(f"dump: {dump.stat().st_size / 1024**2:.0f} MB (pg_dump -Fc) in {time.monotonic() - t:.0f} s")

        from prefect.testing.utilities import prefect_test_harness

        from sevflow.blocks import DatabaseTarget
        from sevflow.models import BackupRef, RestoreToScratch
        from sevflow.tasks.postgres import restore_to_scratch

        def plain(round_: int) -> float:
            """Baseline: what a person types."""
            db = f"{baseline_db}_{round_}"
            made.append(db)
            load_before, t = load(), time.monotonic()
            with pg() as conn:
                conn.execute(f'CREATE DATABASE "{db}"')
            subprocess.run([pg_binary("pg_restore"), "-j", str(args.jobs), "--exit-on-error", "-d",
                            PG_DSN.rsplit("/", 1)[0] + f"/{db}", str(dump)], check=True)
            took = time.monotonic() - t
            print(f"round {round_} baseline  CREATE DATABASE + pg_restore -j {args.jobs}: {took:7.1f} s   "
                  f"(load {load_before} -> {load()})", flush=True)
            return took

        def step(round_: int, block: str, backup: BackupRef) -> float:
            """sevflow: the RESTORE step, as a flow runs it."""
            op = RestoreToScratch(block=block, backup=backup, scratch=f"sevflow_bench_step_{tag}_{round_}",
                                  jobs=args.jobs, run_key=f"bench-{tag}-{round_}")
            made.append(op.scratch)
            load_before, t = load(), time.monotonic()
            result = restore_to_scratch(op)
            took = time.monotonic() - t
            print(f"round {round_} sevflow   RESTORE step (sha256, pg_restore -l, pg_restore -j {args.jobs}): "
                  f"{took:7.1f} s   (load {load_before} -> {load()}; {result.toc_entries} archive entries)", flush=True)
            return took

        baselines: list[float] = []
        steps: list[float] = []
        with prefect_test_harness(server_startup_timeout=300):
            block = f"bench-{tag}"
            DatabaseTarget(service="bench", dsn=PG_DSN, database=source, restore_jobs=args.jobs,
                           local_backup_dir=str(folder)).save(block)
            backup = BackupRef(location="local", key=str(dump), sha256=digest, size=dump.stat().st_size,
                               taken_at=datetime.now(timezone.utc))
            for round_ in range(args.rounds):
                # Alternate which goes first, so a warm cache or a busy neighbour favours neither.
                if round_ % 2 == 0:
                    baselines.append(plain(round_))
                    steps.append(step(round_, block, backup))
                else:
                    steps.append(step(round_, block, backup))
                    baselines.append(plain(round_))
                with pg(f"{baseline_db}_{round_}") as x, pg(f"sevflow_bench_step_{tag}_{round_}") as y:
                    counts = [c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for c in (x, y)
                              for t in ("events_a", "events_b")]
                assert counts[:2] == counts[2:], counts
                for db in (f"{baseline_db}_{round_}", f"sevflow_bench_step_{tag}_{round_}"):
                    with pg() as conn:
                        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        b, s_ = statistics.median(baselines), statistics.median(steps)
        print(f"median of {args.rounds}: baseline {b:.1f} s, sevflow {s_:.1f} s")
        print(f"ratio sevflow / baseline: {s_ / b:.3f}  (goal <= 1.15)")
    finally:
        if not args.keep:
            with pg() as conn:
                for name in made:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()


if __name__ == "__main__":
    main()
