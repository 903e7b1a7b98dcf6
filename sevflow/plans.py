"""What each procedure proposes to change, decided from gathered facts. Pure: no I/O.

A plan is fully resolved before anyone is asked: the commands as strings, the repository,
branch, expected head, the commit and tree (or blob) being restored, the URLs that verify it,
the names of the secrets used; the preconditions that must still hold; how to undo it. The
approver approves that plan (its digest), and the mutating steps take their inputs from it,
never from the block read again later.
"""

from __future__ import annotations

from typing import Literal

from sevflow import markdown as md
from sevflow.models import (
    CacheCommand,
    CreateAutomation,
    DeleteFiles,
    FileEntry,
    GitRestore,
    HealthSpec,
    HostFacts,
    HostSpec,
    KillProcess,
    MemoryTrend,
    Plan,
    Precondition,
    ScheduleCleanup,
    ServiceSpec,
    ShellCommand,
    WriteAlertRules,
    human_bytes,
)
from sevflow.versions import CommitInfo, ConfigDiff, RollbackPreview, render_preview_markdown


def command(spec: ServiceSpec, kind: Literal["build", "deploy", "reload"]) -> ShellCommand | None:
    """The service's `kind` command as an operation, or None if the block has none."""
    text = {"build": spec.build_command, "deploy": spec.deploy_command, "reload": spec.reload_command}[kind]
    if not text:
        return None
    return ShellCommand(kind=kind, service=spec.service, command=text, cwd=str(spec.repository_path),
                        timeout_seconds=spec.command_timeout_seconds, secret_env=list(spec.secret_env),
                        secrets_block=spec.block, target_fingerprint=spec.fingerprint())


def health(spec: ServiceSpec) -> HealthSpec:
    return HealthSpec(service=spec.service, urls=list(spec.health_check_urls),
                      budget_seconds=spec.health_check_budget_seconds,
                      token_block=spec.block if spec.health_check_token else None)


def head_unchanged(spec: ServiceSpec, head: str) -> Precondition:
    return Precondition(check="git-head", repository=spec.repository, branch=spec.branch, sha=head,
                        description=f"branch {spec.branch} of {spec.repository} is still at {head[:12]}, "
                        "with no local changes")


def target_unchanged(spec: ServiceSpec) -> Precondition:
    return Precondition(check="target-unchanged", target=spec.model_copy(update={"reading": ""}),
                        description=f"the service target block {spec.block!r} is unchanged "
                        f"(fingerprint {spec.fingerprint()[:12]})")


def _secrets(spec: ServiceSpec) -> list[str]:
    return [*spec.secret_env, *(["health_check_token"] if spec.health_check_token else [])]


def _commands(*ops: ShellCommand | None) -> list[ShellCommand]:
    return [op for op in ops if op is not None]


def application_rollback_plan(
    spec: ServiceSpec, good: CommitInfo, preview: RollbackPreview, run_key: str,
) -> Plan:
    return Plan(
        kind="application-rollback",
        title=f"Roll back {spec.service} to {good.short} ({good.subject})",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       expected_head=preview.from_sha, source_sha=good.sha, source_tree=preview.to_tree,
                       run_key=run_key, subject=f"Roll back {spec.service} to {good.short}: {good.subject}"),
            *_commands(command(spec, "build"), command(spec, "deploy")),
        ],
        preconditions=[head_unchanged(spec, preview.from_sha), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run application-rollback with version={preview.from_sha[:12]} (the version running now), "
        "or approve the return offered if verification fails",
        details=render_preview_markdown(preview),
        secrets_used=_secrets(spec),
    )


def return_to_previous_plan(
    spec: ServiceSpec, running_before: str, running_before_tree: str, rolled_head: str, run_key: str, why: str,
) -> Plan:
    return Plan(
        kind="return-to-previous-version",
        title=f"Return {spec.service} to {running_before[:12]}, the version running before the rollback",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       expected_head=rolled_head, source_sha=running_before, source_tree=running_before_tree,
                       run_key=run_key, subject=f"Return {spec.service} to {running_before[:12]}"),
            *_commands(command(spec, "build"), command(spec, "deploy")),
        ],
        preconditions=[head_unchanged(spec, rolled_head), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run application-rollback with version={rolled_head[:12]}",
        details=f"Verification after the rollback failed: {md.escape(why)}",
        secrets_used=_secrets(spec),
    )


def configuration_rollback_plan(spec: ServiceSpec, diff: ConfigDiff, source: CommitInfo, run_key: str) -> Plan:
    return Plan(
        kind="configuration-rollback",
        title=f"Restore {diff.path} of {spec.service} from {source.short} ({source.subject})",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}, file {diff.path}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       expected_head=diff.head_sha, source_sha=source.sha, source_tree=diff.blob, path=diff.path,
                       run_key=run_key, subject=f"Restore {diff.path} from {source.short}"),
            *_commands(command(spec, "reload")),
        ],
        preconditions=[head_unchanged(spec, diff.head_sha), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run configuration-rollback for {diff.path} with commit={diff.head_sha[:12]}",
        details="\n".join([
            f"**What changed since {source.short}** ({md.code(f'git diff {source.short} HEAD -- {diff.path}')}); "
            "restoring reverses it:",
            "",
            md.fence(diff.diff.strip() or "(no difference)", "diff"),
        ]),
        secrets_used=_secrets(spec),
    )


# --- Memory/Disk Full --------------------------------------------------------------------

MONITORING_DEPLOYMENT = "memory-disk-full/sevflow"


def host_unchanged(spec: HostSpec) -> Precondition:
    return Precondition(check="host-target-unchanged", host_target=spec.model_copy(update={"reading": ""}),
                        description=f"the host target block {spec.block!r} is unchanged "
                        f"(fingerprint {spec.fingerprint()[:12]})")


def judge_memory_trend(samples: list[int], min_growth_bytes: int) -> Literal["leak", "legitimate"]:
    """A leak grows steadily: by at least `min_growth_bytes` over the window, rising in at
    least half the intervals and never dropping (beyond 64 KiB of noise). Anything else,
    however large, is read as legitimate use."""
    if len(samples) < 2:
        return "legitimate"
    steps = list(zip(samples, samples[1:]))
    rises = sum(1 for a, b in steps if b > a)
    drops = sum(1 for a, b in steps if b < a - 64 * 1024)
    grew = samples[-1] - samples[0]
    return "leak" if grew >= max(min_growth_bytes, 1) and drops == 0 and rises * 2 >= len(steps) else "legitimate"


def pressure(spec: HostSpec, facts: HostFacts) -> list[str]:
    """What is over the block's thresholds, one sentence each (empty: nothing is full)."""
    lines = [f"{fs.mount} is {fs.used_percent:g}% full (threshold {spec.disk_threshold_percent:g}%)"
             for fs in facts.filesystems if fs.used_percent >= spec.disk_threshold_percent]
    if facts.memory.used_percent >= spec.memory_threshold_percent:
        lines.append(f"memory is {facts.memory.used_percent:g}% used (threshold {spec.memory_threshold_percent:g}%)")
    return lines


def choose_memory_hog(spec: HostSpec, facts: HostFacts) -> MemoryTrend | None:
    """The process to propose killing: a killable one (block's globs) at least the block's
    minimum size that leaks, the largest first; if none leaks, the largest killable one, but
    only while memory is over its threshold (legitimate use is not killed for nothing)."""
    candidates = [t for t in facts.trends if t.process.pid in facts.killable and t.verdict != "exited"
                  and t.samples[-1] >= spec.kill_min_rss_bytes]
    leaking = [t for t in candidates if t.verdict == "leak"]
    pool = leaking or (candidates if facts.memory.used_percent >= spec.memory_threshold_percent else [])
    return max(pool, key=lambda t: t.samples[-1], default=None)


def clear_caches_plan(spec: HostSpec, folders: list[tuple[str, list[FileEntry]]],
                      measured: dict[str, int]) -> Plan | None:
    ops: list[DeleteFiles | CacheCommand] = [
        DeleteFiles(purpose="cache", host=spec.host, root=root, files=files) for root, files in folders if files
    ]
    ops += [CacheCommand(host=spec.host, name=c.name, command=c.command, path=c.path, measured_bytes=measured.get(c.name, 0),
                         timeout_seconds=c.timeout_seconds, target_fingerprint=spec.fingerprint(), block=spec.block)
            for c in spec.cache_commands]
    if not ops:
        return None
    frees = sum(op.freed_bytes if isinstance(op, DeleteFiles) else op.measured_bytes for op in ops)
    names = [f"{op.root} ({human_bytes(op.freed_bytes)})" if isinstance(op, DeleteFiles)
             else f"{op.name} ({human_bytes(op.measured_bytes)})" for op in ops]
    return Plan(
        kind="clear-caches",
        title=f"Clear caches on {spec.host}: frees {human_bytes(frees)} ({frees} bytes)",
        target=f"host {spec.host}: {', '.join(names)}",
        operations=ops,
        preconditions=[host_unchanged(spec)],
        undo="Caches refill themselves as they are used; nothing to restore (expect slower first requests).",
    )


def temp_files_plan(spec: HostSpec, folders: list[tuple[str, list[FileEntry]]]) -> Plan | None:
    ops = [DeleteFiles(purpose="temp", host=spec.host, root=root, min_age_seconds=spec.temp_min_age_seconds,
                       files=files) for root, files in folders if files]
    if not ops:
        return None
    frees = sum(op.freed_bytes for op in ops)
    count = sum(len(op.files) for op in ops)
    return Plan(
        kind="delete-temp-files",
        title=f"Delete {count} temp file(s) older than {spec.temp_min_age_seconds:g} s on {spec.host}: "
              f"frees {human_bytes(frees)} ({frees} bytes)",
        target=f"host {spec.host}, allow-listed folders: {', '.join(op.root for op in ops)}",
        operations=ops,
        preconditions=[host_unchanged(spec)],
        undo="None: deleted files are gone (only files unmodified for the minimum age, in allow-listed folders, "
             "are listed). Restore from backup if one was needed.",
        details=md.fence("\n".join(f"{op.root}: {len(op.files)} file(s), {op.freed_bytes} bytes" for op in ops)),
    )


def kill_process_plan(spec: HostSpec, hog: MemoryTrend) -> Plan:
    p = hog.process
    return Plan(
        kind="kill-process",
        title=f"Kill pid {p.pid} on {spec.host} ({p.command[:60]}): frees about {human_bytes(hog.samples[-1])} "
              f"of memory ({hog.verdict})",
        target=f"host {spec.host}, pid {p.pid}, started at tick {p.start_time}",
        operations=[KillProcess(host=spec.host, pid=p.pid, start_time=p.start_time, boot_id=p.boot_id,
                                command=p.command, rss_bytes=hog.samples[-1], grace_seconds=spec.kill_grace_seconds)],
        preconditions=[
            Precondition(check="process-unchanged", pid=p.pid, start_time=p.start_time, boot_id=p.boot_id,
                         description=f"pid {p.pid} is still the same process (started at tick {p.start_time}, "
                         f"boot {p.boot_id[:8]}): a reused PID is refused"),
            host_unchanged(spec),
        ],
        undo="Start the process again the way it is normally started (its service manager may already do so).",
        details=f"Memory trend: {md.escape(hog.sentence())}",
    )


def alert_rules(spec: HostSpec) -> str:
    """Prometheus alert rules (node_exporter metrics) for the block's filesystems and memory."""
    host = spec.host.replace('"', "")
    lines = ["# Written by sevflow (memory-disk-full) for host " + host, "groups:",
             f"  - name: sevflow-{host}-memory-disk", "    rules:"]
    for mount in spec.filesystems:
        m = mount.replace('"', "")
        lines += [
            f"      - alert: DiskFull_{_slug(host)}_{_slug(m) or 'root'}",
            f'        expr: 100 * (1 - node_filesystem_avail_bytes{{instance=~"{host}.*",mountpoint="{m}"}} '
            f'/ node_filesystem_size_bytes{{instance=~"{host}.*",mountpoint="{m}"}}) > {spec.disk_threshold_percent:g}',
            "        for: 5m",
            "        labels: {severity: major}",
            f'        annotations: {{summary: "{m} on {host} is over {spec.disk_threshold_percent:g}% full"}}',
        ]
    lines += [
        f"      - alert: MemoryFull_{_slug(host)}",
        f'        expr: 100 * (1 - node_memory_MemAvailable_bytes{{instance=~"{host}.*"}} '
        f'/ node_memory_MemTotal_bytes{{instance=~"{host}.*"}}) > {spec.memory_threshold_percent:g}',
        "        for: 5m",
        "        labels: {severity: major}",
        f'        annotations: {{summary: "memory on {host} is over {spec.memory_threshold_percent:g}% used"}}',
    ]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def automation_name(spec: HostSpec) -> str:
    return f"sevflow memory-disk-full {spec.host}"


def cleanup_slug(spec: HostSpec) -> str:
    """Slugs starting `sevflow-cleanup-` are kept by `sevflow serve` when it registers again."""
    return f"sevflow-cleanup-{_slug(spec.block)}"


def rules_path(spec: HostSpec) -> str | None:
    if not spec.prometheus_rules_dir:
        return None
    return f"{spec.prometheus_rules_dir.rstrip('/')}/sevflow-{_slug(spec.host)}.rules.yml"


def prevention_plan(spec: HostSpec, deployment_id: str, has_automation: bool, has_rules: bool,
                    has_schedule: bool, resource_id: str, event: str) -> Plan | None:
    """Monitoring, alerts and the cleanup schedule that are not in place yet (None: all are)."""
    ops: list[CreateAutomation | WriteAlertRules | ScheduleCleanup] = []
    if not has_automation:
        ops.append(CreateAutomation(
            name=automation_name(spec), event=event, resource_id=resource_id, deployment=MONITORING_DEPLOYMENT,
            deployment_id=deployment_id,
            parameters={"host": spec.block, "severity": "SEV-2",
                        "reason": f"{spec.host} reported memory or disk over its threshold"}))
    path = rules_path(spec)
    if path and not has_rules:
        ops.append(WriteAlertRules(path=path, content=alert_rules(spec)))
    if not has_schedule:
        ops.append(ScheduleCleanup(
            deployment=MONITORING_DEPLOYMENT, deployment_id=deployment_id, slug=cleanup_slug(spec),
            interval_seconds=spec.cleanup_interval_seconds,
            parameters={"host": spec.block, "severity": "SEV-4", "reason": "scheduled cleanup check"}))
    if not ops:
        return None
    rules = next((op for op in ops if isinstance(op, WriteAlertRules)), None)
    return Plan(
        kind="add-monitoring",
        title=f"Prevent recurrence on {spec.host}: " + ", ".join(
            {"create-automation": "add monitoring (automation)", "write-alert-rules": "set up alerts (Prometheus)",
             "schedule-cleanup": f"schedule a cleanup check every {spec.cleanup_interval_seconds:g} s"}[op.op]
            for op in ops),
        target=f"host {spec.host}; Prefect deployment {MONITORING_DEPLOYMENT}",
        operations=ops,
        preconditions=[host_unchanged(spec)],
        undo=f"Delete the automation {automation_name(spec)!r} (Prefect UI, Automations), the schedule "
             f"{cleanup_slug(spec)!r} of {MONITORING_DEPLOYMENT}" + (f", and the file {path}" if path else "") + ".",
        details=("**The alert rules:**\n\n" + md.fence(rules.content, "yaml")) if rules else "",
    )


def findings(spec: HostSpec, facts: HostFacts) -> list[str]:
    """Runbook step 4, ROOT CAUSE: what the run found, a sentence each, for the post-mortem."""
    lines = [f"Filesystem {fs.mount}: {fs.used_percent:g}% used, {human_bytes(fs.available_bytes)} available."
             for fs in facts.filesystems]
    for scan in facts.scans:
        dirs = ", ".join(f"{d.path} ({human_bytes(d.bytes)})" for d in scan.largest_directories[1:4])
        files = ", ".join(f"{f.path} ({human_bytes(f.bytes)})" for f in scan.largest_files[:3])
        lines.append(f"Under {scan.root} ({human_bytes(scan.total_bytes)} in {scan.files} files): largest "
                     f"directories {dirs or 'none'}; largest files {files or 'none'}.")
        lines.append(f"Recent growth under {scan.root}: {human_bytes(scan.recent_bytes)} written in the last "
                     f"{spec.growth_window_seconds:g} s.")
    lines.append(f"Memory: {facts.memory.used_percent:g}% used, {human_bytes(facts.memory.available_bytes)} available.")
    lines += [f"Memory trend: {t.sentence()}" for t in facts.trends
              if t.verdict == "leak" or t.process.pid in facts.killable]
    return lines


def root_cause(spec: HostSpec, facts: HostFacts) -> str:
    """The post-mortem's root cause as far as the facts show it: what is full, what grew, leak or legitimate."""
    parts = pressure(spec, facts) or ["no filesystem or memory was over its threshold when measured"]
    for scan in facts.scans:
        biggest = scan.largest_directories[1:2] or scan.largest_directories[:1]
        if biggest:
            parts.append(f"the largest directory under {scan.root} is {biggest[0].path} "
                         f"({human_bytes(biggest[0].bytes)}); {human_bytes(scan.recent_bytes)} were written there "
                         f"in the last {spec.growth_window_seconds:g} s")
    leaks = [t for t in facts.trends if t.verdict == "leak"]
    parts += [f"memory: {t.sentence()}" for t in leaks] or [
        "memory: no sampled process grew steadily (legitimate use, not a leak)"]
    return "; ".join(parts) + ". Fix the underlying issue (the leak, the writer that fills the disk) and record it here."
