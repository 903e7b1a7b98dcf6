"""The database plans' pure decisions: which backup, what differs, plans that survive a round trip."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sevflow import plans
from sevflow.models import BackupRef, DatabaseSpec, Plan, TableSum, Verification, WriteState

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def backup(key: str, hours_ago: float) -> BackupRef:
    return BackupRef(location="s3", key=key, bucket_block="b", sha256="a" * 64, taken_at=NOW - timedelta(hours=hours_ago))


BACKUPS = [backup("p/db-recent.dump", 0.1), backup("p/db-x-forensic-1234.dump", 0.05),
           backup("p/db-nightly.dump", 24), backup("p/db-older.dump", 72)]


def test_the_last_backup_before_the_corruption_started_is_picked() -> None:
    assert plans.pick_backup(BACKUPS, NOW - timedelta(hours=1), None).key == "p/db-nightly.dump"
    # Unknown start: the newest, never a forensic dump of the corrupted state.
    assert plans.pick_backup(BACKUPS, None, None).key == "p/db-recent.dump"
    assert plans.pick_backup(BACKUPS, NOW - timedelta(hours=100), None) is None
    # Named, by key or file name, even when newer than the start.
    assert plans.pick_backup(BACKUPS, NOW - timedelta(hours=1), "db-recent.dump").key == "p/db-recent.dump"
    assert plans.pick_backup(BACKUPS, None, "nope.dump") is None


def test_differences_are_found_by_table_and_key_range() -> None:
    live = [TableSum(table="public.orders", rows=3, checksum="9", key="id", chunks={"0": ["2", "5"], "1000000": ["1", "4"]}),
            TableSum(table="public.customers", rows=2, checksum="7")]
    restored = [TableSum(table="public.orders", rows=2, checksum="5", key="id", chunks={"0": ["2", "5"]}),
                TableSum(table="public.customers", rows=2, checksum="7")]
    v = Verification(live="db", restored="db_restore", backup_taken_at=NOW, checks=[], live_tables=live,
                     restored_tables=restored, gap=[], verified_at=NOW)
    assert v.differing_tables() == ["public.orders"]
    assert v.differing_chunks("public.orders") == ["1000000"]
    assert v.clean


def test_database_plans_round_trip_with_the_same_digest() -> None:
    spec = DatabaseSpec(block="db", service="shop", server="127.0.0.1:5432/postgres", database="shop",
                        app_roles=["app"], restore_jobs=4)
    state = WriteState(database="shop", roles_login={"app": True}, sessions=3, checked_at=NOW)
    for plan in (plans.stop_writes_plan(spec, state, "run-1"),
                 plans.restore_plan(spec, None, BACKUPS[2], "run-1"),
                 plans.allow_writes_plan(spec, ["app"], "run-1", "rejected")):
        again = Plan.model_validate(plan.model_dump(mode="json"))
        assert again.digest == plan.digest and type(again.operations[0]) is type(plan.operations[0])
    restore = plans.restore_plan(spec, None, BACKUPS[2], "run-1")
    assert "pg_restore -j 4 -d shop_restore_run1" in restore.describe()


def test_an_intake_rule_can_start_the_database_procedures() -> None:
    import inspect

    from sevflow.deployments import procedures
    from sevflow.intake.alerts import Alert
    from sevflow.intake.rules import load_rules

    procs = {name: list(inspect.signature(f.fn).parameters) for name, f in procedures().items()}
    rules = load_rules("""\
rules:
  - name: negative-amounts
    match: {labels: {alertname: "NegativeAmounts"}}
    procedure: data-corruption
    service_label: database
    severity: SEV-1
  - name: bad-migration
    match: {labels: {alertname: "MigrationFailed"}}
    procedure: database-rollback
    service: orders-db
    severity: SEV-2
    parameters: {migration: 002_add_discount}
""", "rules.yaml", procs)
    base = dict(source="alertmanager", identity="alertmanager:1", group_key="g", status="firing", summary="s")
    r = rules.route(Alert.model_validate(base | {"labels": {"alertname": "NegativeAmounts", "database": "orders-db"}}))
    assert r is not None and (r.procedure, r.service) == ("data-corruption", "orders-db")
    r2 = rules.route(Alert.model_validate(base | {"labels": {"alertname": "MigrationFailed"}}))
    assert r2 is not None and r2.parameters == {"migration": "002_add_discount"}
