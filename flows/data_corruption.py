"""Data Corruption (EMERGENCY-PROCEDURES.md, "Data Corruption").

    1. STOP writes immediately        read-only that holds (gated)
    2. ASSESS scope                   integrity checks, affected tables, since when, backups
    3. BACKUP current state           even if corrupted, for forensics (S3, checksum, kept)
    4. RESTORE from backup            last good backup, integrity tested, into a separate database (gated)
    5. VERIFY data                    checks, counts and checksums, the gap; swap in and allow writes (gated)
    6. COMMUNICATE                    notify; the data-loss window in the post-mortem

Steps 4 and 5 (`restore_verify_swap`) are shared with Database Rollback's restore.
"""

# No `from __future__ import annotations` here: Prefect builds the Run form and validates
# parameters from the flow's annotations, which must be real types, not strings.

from datetime import datetime

from prefect import flow
from prefect.states import Cancelled, Completed, State
from pydantic import BaseModel

from sevflow import plans
from sevflow.errors import PreflightError
from sevflow.kit import (
    GateClosed,
    Plan,
    Procedure,
    ProcedureEnd,
    NOTHING_TO_DO,
    REJECTED,
    Severity,
    begin,
    procedure_parameters,
    publish_records,
    run,
)
from sevflow.models import Assessment, BackupRef, DatabaseSpec, Verification
from sevflow.tasks.notify import communicate
from sevflow.tasks.postgres import (
    allow_writes,
    assess_scope,
    backup_current_state,
    restore_to_scratch,
    stop_writes,
    swap_database,
    verify_restored,
    write_state,
)
from sevflow.tasks.targets import read_database_target

PROCEDURE = "data-corruption"


class DataRecoveryReport(BaseModel):
    incident_id: str
    database: str
    restored_from: str
    backup_taken_at: datetime
    forensic_backup: str
    kept_as: str
    gap_rows: int
    data_loss_window: str
    plan_digests: list[str]


@flow(name=PROCEDURE, persist_result=True, log_prints=False)
@procedure_parameters
def data_corruption(
    service: str,
    backup: str | None = None,
    severity: Severity = Severity.SEV2,
    incident_id: str | None = None,
    reason: str = "",
    policy: str = "default",
    dry_run: bool = False,
) -> DataRecoveryReport | State:
    """Stop the damage to a database, keep every byte, restore the last good backup into a
    separate database, prove it, and swap it in, each change after approval.

    Stops writes (read-only that a client cannot turn off), assesses the damage with the
    block's integrity checks, dumps the current (corrupted) state to the backups for forensics,
    restores the last backup taken before the corruption started into a new database,
    compares it with the live one (integrity, counts, checksums, the rows that would be lost),
    and swaps it in; the corrupted database is kept under a new name.

    Args:
        service: Name of the `sevflow Database Target` block of the corrupted database (as alerts name the service).
        backup: Key (or file name) of the backup to restore; empty for the last one taken before the corruption started.
    """
    spec = read_database_target(service)  # an unknown database target stops here, before anything
    ctx = begin(PROCEDURE, spec.service, severity, incident_id, reason, policy, dry_run, spec.approval_policy)
    return run(ctx, recover_from_corruption, service, backup)


def recover_from_corruption(ctx: Procedure, database: str, backup: str | None = None) -> DataRecoveryReport:
    """The runbook's Data Corruption, in the caller's run."""
    # 1. STOP writes: read-only that holds, after approval.
    stop = ctx.approve(lambda reading: plan_stop_writes(ctx, database, reading), gate="stop-writes")
    stopped = stop_writes(stop.operation("stop-writes"))
    spec = approved_spec(stop)

    # 2. ASSESS scope; 3. BACKUP current state, corrupted or not.
    assessment = assess_scope(spec)
    forensic = backup_current_state(spec, ctx.run_key, stopped.checked_at)
    if assessment.bad_rows == 0 and not backup:
        raise offer_allow_writes(ctx, spec, stop, "The integrity checks find no bad rows and no backup was named: "
                                 "nothing to restore.", outcome="nothing to do")

    # 4. RESTORE, 5. VERIFY and swap, 6. COMMUNICATE.
    return restore_verify_swap(ctx, spec, stop, assessment.backups, assessment, backup, forensic,
                               stopped_at=stopped.checked_at)


def approved_spec(plan: Plan) -> DatabaseSpec:
    """The database target as the approved plan read it."""
    spec = next(p.database for p in plan.preconditions if p.database is not None)
    assert spec is not None
    return spec


def plan_stop_writes(ctx: Procedure, database: str, reading: str) -> Plan:
    spec = read_database_target(database, reading)
    state = write_state(spec)
    if not state.exists:
        raise PreflightError(f"Database {spec.database!r} does not exist on {spec.server}: fix the database target "
                             f"block {spec.block!r}. Nothing was changed.")
    return plans.stop_writes_plan(spec, state, ctx.run_key)


def restore_verify_swap(
    ctx: Procedure, spec: DatabaseSpec, stop: Plan, backups: list[BackupRef], assessment: Assessment | None,
    named: str | None, forensic: BackupRef, stopped_at: datetime,
) -> DataRecoveryReport:
    """RESTORE from backup into a separate database, VERIFY it, swap it in and allow writes,
    COMMUNICATE. Shared by Data Corruption and Database Rollback. A rejection at either gate
    offers to allow writes to the unchanged live database again."""
    stopped_roles = stop.operation("stop-writes").roles
    try:
        restore = ctx.approve(lambda reading: plan_restore(ctx, spec.block, backups, assessment, named, reading),
                              gate="restore")
        restored = restore_to_scratch(restore.operation("restore-to-scratch"))
        verification = verify_restored(spec, restored.scratch, restored.backup.taken_at)
        swap = ctx.approve(lambda reading: plan_swap(ctx, spec.block, verification, stopped_roles, reading),
                           gate="swap")
    except GateClosed as closed:
        raise offer_allow_writes(ctx, spec, stop, closed.message, closed=closed) from None
    swapped = swap_database(swap.operation("swap-database"))
    allow_writes(swap.operation("allow-writes"))

    window = (f"{restored.backup.taken_at:%Y-%m-%d %H:%M:%S} UTC (backup taken) to "
              f"{stopped_at:%Y-%m-%d %H:%M:%S} UTC (writes stopped)")
    gap = "; ".join(f"{g.table}: {g.rows} rows" for g in verification.gap) or "unknown (no timestamp columns configured)"
    resolution = [
        f"Writes to {spec.database} stopped (plan {stop.digest[:12]}).",
        f"Current state dumped for forensics: {forensic.label}, sha256 {forensic.sha256}.",
        f"Restored {restored.backup.label} (sha256 checked) into {restored.scratch}; integrity checks "
        + ("clean." if verification.clean else "NOT clean."),
        f"Swapped the restored copy in as {spec.database} (plan {swap.digest[:12]}); the previous database is kept "
        f"as {swapped.kept_as}; writes allowed again.",
        f"Data-loss window: {window}. Gap (rows in the corrupted database newer than the backup, not in the "
        f"restored one): {gap}. They remain readable in {swapped.kept_as}.",
    ]
    communicate(spec.notification_block, f"[{ctx.incident.severity.value}] {spec.database} restored from backup",
                "\n".join(resolution))
    publish_records(ctx.incident, "resolved", resolution,
                    ["Immediate fix applied", "System verified working"],
                    impact=f"Data written to {spec.database} between {window} is not in the restored database ({gap}).")
    return DataRecoveryReport(
        incident_id=ctx.incident.incident_id, database=spec.database, restored_from=restored.backup.key,
        backup_taken_at=restored.backup.taken_at, forensic_backup=forensic.key, kept_as=swapped.kept_as,
        gap_rows=verification.gap_rows, data_loss_window=window,
        plan_digests=[stop.digest, restore.digest, swap.digest],
    )


def plan_restore(ctx: Procedure, block: str, backups: list[BackupRef], assessment: Assessment | None,
                 named: str | None, reading: str) -> Plan:
    spec = read_database_target(block, reading)
    started = assessment.started_at if assessment else None
    chosen = plans.pick_backup(backups, started, named)
    if chosen is None:
        listed = ", ".join(b.key for b in backups[:10]) or "none"
        raise PreflightError(
            (f"No backup named {named!r}" if named else "No backup taken before the corruption started")
            + f" among the backups of {spec.database} ({listed}). Writes stay stopped; name a backup "
            "(backup=...) and run again, or allow writes by hand. Nothing was restored."
        )
    return plans.restore_plan(spec, assessment, chosen, ctx.run_key)


def plan_swap(ctx: Procedure, block: str, verification: Verification, roles: list[str], reading: str) -> Plan:
    spec = read_database_target(block, reading)
    return plans.swap_plan(spec, verification, roles, ctx.run_key, verification.verified_at)


def offer_allow_writes(ctx: Procedure, spec: DatabaseSpec, stop: Plan, why: str, *,
                       closed: GateClosed | None = None, outcome: str = "rejected") -> ProcedureEnd:
    """Nothing will be restored: offer (gated) to allow writes to the unchanged database again."""
    roles = stop.operation("stop-writes").roles
    try:
        plan = ctx.approve(lambda reading: plans.allow_writes_plan(read_database_target(spec.block, reading), roles,
                                                                   ctx.run_key, why), gate="allow-writes")
    except GateClosed:
        message = f"{why} Writes to {spec.database} stay stopped (allowing them again was not approved)."
        return ProcedureEnd(outcome, message, [message], Cancelled, REJECTED)
    allow_writes(plan.operation("allow-writes"))
    message = f"{why} {spec.database} is unchanged; writes allowed again (plan {plan.digest[:12]})."
    if closed is not None:
        return ProcedureEnd(closed.outcome, message, [message], closed.state, closed.state_name)
    return ProcedureEnd(outcome, message, [message], Completed, NOTHING_TO_DO)
