"""What each procedure proposes to change, decided from gathered facts. Pure: no I/O.

A plan is fully resolved before anyone is asked: the commands as strings, the repository,
branch, expected head, the commit and tree (or blob) being restored, the URLs that verify it,
the names of the secrets used; the preconditions that must still hold; how to undo it. The
approver approves that plan (its digest), and the mutating steps take their inputs from it,
never from the block read again later.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

from sevflow import markdown as md
from sevflow.models import (
    FailoverCommand,
    CacheCommand,
    CreateAutomation,
    DeleteFiles,
    FileEntry,
    AccessKeyFact,
    AwsAccountSpec,
    AwsProbe,
    DenyIps,
    DisableAccessKey,
    InstanceFact,
    IpSetFact,
    IsolateInstance,
    KeyActivity,
    NaclDeny,
    NaclFact,
    PatchCommand,
    RotateAccessKey,
    ScopeAssessment,
    WafBlockIps,
    AllowWrites,
    Assessment,
    BackupRef,
    DatabaseSpec,
    MigrationRollback,
    RestoreToScratch,
    StopWrites,
    SwapDatabase,
    Verification,
    WriteState,
    GitRestore,
    OutageSpec,
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
    remote = {"repository": spec.repository, "branch": spec.branch,
              "credentials_block": spec.credentials_block} if spec.remote else {}
    return ShellCommand(kind=kind, service=spec.service, command=text, cwd=str(spec.repository_path),
                        timeout_seconds=spec.command_timeout_seconds, secret_env=list(spec.secret_env),
                        secrets_block=spec.block, target_fingerprint=spec.fingerprint(), **remote)


def health(spec: ServiceSpec) -> HealthSpec:
    return HealthSpec(service=spec.service, urls=list(spec.health_check_urls),
                      budget_seconds=spec.health_check_budget_seconds,
                      token_block=spec.block if spec.health_check_token else None)


def head_unchanged(spec: ServiceSpec, head: str) -> Precondition:
    if spec.remote:
        return Precondition(check="git-head", repository=spec.repository, branch=spec.branch, sha=head,
                            credentials_block=spec.credentials_block,
                            description=f"branch {spec.branch} of the remote {spec.repository} is still at "
                            f"{head[:12]} (fetched again just before the change)")
    return Precondition(check="git-head", repository=spec.repository, branch=spec.branch, sha=head,
                        description=f"branch {spec.branch} of {spec.repository} is still at {head[:12]}, "
                        "with no local changes")


def target_unchanged(spec: ServiceSpec) -> Precondition:
    return Precondition(check="target-unchanged", target=spec.model_copy(update={"reading": ""}),
                        description=f"the service target block {spec.block!r} is unchanged "
                        f"(fingerprint {spec.fingerprint()[:12]})")


def _secrets(spec: ServiceSpec) -> list[str]:
    return [*spec.secret_env, *(["health_check_token"] if spec.health_check_token else []),
            *(["repository_credential"] if spec.repository_credential else [])]


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
                       credentials_block=spec.credentials_block,
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
                       credentials_block=spec.credentials_block,
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
                       credentials_block=spec.credentials_block,
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


def profile_unchanged(profile: OutageSpec) -> Precondition:
    return Precondition(check="profile-unchanged", profile=profile.model_copy(update={"reading": ""}),
                        description=f"the outage profile block {profile.block!r} is unchanged "
                        f"(fingerprint {profile.fingerprint()[:12]})")


def failover_plan(profile: OutageSpec, spec: ServiceSpec, dependency: str, dependency_url: str, why: str) -> Plan:
    """Production System Down, "If external: failover": the profile's failover command, run once."""
    if not profile.failover_command:
        raise ValueError(f"outage profile {profile.block!r} has no failover_command")
    cwd = profile.failover_cwd or str(spec.repository_path)
    return Plan(
        kind="failover",
        title=f"Fail {spec.service} over from {dependency} (down)",
        target=f"service {spec.service}, external dependency {dependency} ({dependency_url})",
        operations=[FailoverCommand(service=spec.service, dependency=dependency, command=profile.failover_command,
                                    cwd=cwd, timeout_seconds=spec.command_timeout_seconds,
                                    profile_block=profile.block, profile_fingerprint=profile.fingerprint())],
        preconditions=[profile_unchanged(profile)],
        verify=health(spec),
        undo=f"switch back to {dependency} by hand once it answers again (the failover command's counterpart)",
        details=f"**Why:** {md.escape(why)}",
    )


def hotfix_plan(spec: ServiceSpec, fix: CommitInfo, preview: RollbackPreview, run_key: str, asked_by: str) -> Plan:
    """Production System Down, "If code bug: hotfix": put the named ref's content on the branch
    as one new commit on top of what runs, build, deploy."""
    return Plan(
        kind="hotfix-deploy",
        title=f"Deploy hotfix {fix.short} ({fix.subject}) to {spec.service}",
        target=f"service {spec.service}, repository {spec.repository}, branch {spec.branch}",
        operations=[
            GitRestore(service=spec.service, repository=spec.repository, branch=spec.branch,
                       credentials_block=spec.credentials_block,
                       expected_head=preview.from_sha, source_sha=fix.sha, source_tree=preview.to_tree,
                       run_key=run_key, subject=f"Hotfix {spec.service}: {fix.subject} ({fix.short})"),
            *_commands(command(spec, "build"), command(spec, "deploy")),
        ],
        preconditions=[head_unchanged(spec, preview.from_sha), target_unchanged(spec)],
        verify=health(spec),
        undo=f"run application-rollback with version={preview.from_sha[:12]} (the version running now)",
        details="\n".join([
            f"**Hotfix ref named by:** {md.escape(asked_by)}",
            "",
            f"**What changes from {md.code(preview.from_sha[:12])} (running) to {md.code(fix.short)}:** "
            f"{preview.files_changed} file(s), +{preview.insertions} −{preview.deletions}",
            "",
            md.fence(preview.diff.strip() or "(no difference)", "diff"),
        ]),
        secrets_used=_secrets(spec),
    )


# --- Memory/Disk Full --------------------------------------------------------------------

MONITORING_DEPLOYMENT = "memory-disk-full/Memory or Disk Full"  # deployments.deployment_path("memory-disk-full")


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


# --- Security Breach (AWS) ----------------------------------------------------------------


def normalise_ips(ips: list[str]) -> list[str]:
    """Each address or network as a CIDR (`203.0.113.7` → `203.0.113.7/32`), sorted, once each.
    Raises ValueError naming the first entry that is neither."""
    out = set()
    for ip in ips:
        try:
            out.add(str(ipaddress.ip_network(ip.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"{ip!r} is not an IP address or network") from exc
    return sorted(out)


def aws_target_unchanged(spec: AwsAccountSpec) -> Precondition:
    return Precondition(check="aws-target-unchanged", account=spec.model_copy(update={"reading": ""}),
                        description=f"the AWS account target block {spec.block!r} is unchanged "
                        f"(fingerprint {spec.fingerprint()[:12]})")


def _still(spec: AwsAccountSpec, probe: AwsProbe, description: str) -> Precondition:
    return Precondition(check="aws-state", aws=spec.access, probe=probe, description=description)


def disable_keys_plan(spec: AwsAccountSpec, keys: list[AccessKeyFact]) -> Plan:
    """Set every still-active compromised key Inactive (kept, so it can be examined or re-enabled)."""
    active = [k for k in keys if k.status == "Active"]
    ops = [DisableAccessKey(aws=spec.access, user=k.user, access_key_id=k.access_key_id, prior_status=k.status)
           for k in active]
    return Plan(
        kind="disable-credentials",
        title=f"Disable {len(ops)} compromised access key(s) in {spec.account}: "
        + ", ".join(f"{k.access_key_id} ({k.user})" for k in active),
        target=f"AWS account {spec.account} ({spec.access.region}), IAM",
        operations=ops,
        preconditions=[aws_target_unchanged(spec), *[
            _still(spec, AwsProbe(kind="access-key-status", subject=k.access_key_id, context={"user": k.user},
                                  value=[k.status]), f"access key {k.access_key_id} of {k.user} is still {k.status}")
            for k in active]],
        undo="; ".join(op.undo_line() for op in ops),
        details="\n".join(["**Prior state:**", ""] + [
            f"- {md.code(k.access_key_id)} of {md.code(k.user)}: {k.status}, created {k.created_at or '?'}, "
            f"last used {k.last_used_at or 'never'} {md.escape(k.last_used_service)} {md.escape(k.last_used_region)}"
            for k in keys]),
    )


def free_rule_numbers(taken: set[int], base: int, count: int) -> list[int]:
    """The `count` lowest rule numbers from `base` that no entry uses (NACL numbers end at 32766)."""
    found, n = [], base
    while len(found) < count:
        if n > 32766:
            raise ValueError(f"no {count} free network ACL rule numbers from {base}")
        if n not in taken:
            found.append(n)
        n += 1
    return found


def block_ips_plan(spec: AwsAccountSpec, cidrs: list[str], acl: NaclFact | None, ip_set: IpSetFact | None) -> Plan:
    """Deny each suspicious network in the ACL, both directions, at free rule numbers from the
    block's base (below the allow rules, so the deny wins); add them to the WAF IP set if one is set."""
    ops: list[DenyIps | WafBlockIps] = []
    pre = [aws_target_unchanged(spec)]
    notes: list[str] = []
    if acl is not None:
        want = [(cidr, egress) for cidr in cidrs for egress in (False, True)
                if not any(e.action == "deny" and e.cidr == cidr and e.egress == egress for e in acl.entries)]
        entries = []
        for egress in (False, True):
            mine = [c for c, e in want if e == egress]
            numbers = free_rule_numbers({e.rule_number for e in acl.entries if e.egress == egress}, spec.deny_rule_base,
                                        len(mine))
            entries += [NaclDeny(rule_number=n, cidr=c, egress=egress) for n, c in zip(numbers, mine)]
            allows = [e.rule_number for e in acl.entries if e.egress == egress and e.action == "allow"]
            if mine and allows and min(allows) < max(numbers):
                notes.append(f"an {'egress' if egress else 'ingress'} allow rule ({min(allows)}) comes before a deny "
                             f"({max(numbers)}): lower `deny_rule_base` so the deny wins")
        if entries:
            ops.append(DenyIps(aws=spec.access, network_acl_id=acl.network_acl_id, entries=entries,
                               prior_entries=acl.lines()))
            pre.append(_still(spec, AwsProbe(kind="nacl-entries", subject=acl.network_acl_id, value=acl.lines()),
                              f"network ACL {acl.network_acl_id} still has exactly the entries it had when planned"))
    if ip_set is not None:
        version = 6 if ip_set.version == "IPV6" else 4
        add = [c for c in cidrs if ipaddress.ip_network(c).version == version and c not in ip_set.addresses]
        if add:
            ops.append(WafBlockIps(aws=spec.access, ip_set=ip_set.ref, add=add, prior_addresses=ip_set.addresses))
            pre.append(_still(spec, AwsProbe(kind="ip-set-addresses", subject=ip_set.ref.id,
                                             context={"name": ip_set.ref.name, "scope": ip_set.ref.scope},
                                             value=ip_set.addresses),
                              f"WAF IP set {ip_set.ref.name} still holds exactly {len(ip_set.addresses)} address(es)"))
    return Plan(
        kind="block-ips",
        title=f"Block {len(cidrs)} suspicious IP(s) in {spec.account}: {', '.join(cidrs)}",
        target=f"AWS account {spec.account} ({spec.access.region}), network ACL {spec.network_acl_id or '-'}"
        + (f", WAF IP set {spec.waf_ip_set.name}" if spec.waf_ip_set else ""),
        operations=ops,
        preconditions=pre,
        undo="; ".join(op.undo_line() for op in ops),
        details="\n".join([
            "**Prior state:**", "",
            *([f"- network ACL {md.code(acl.network_acl_id)}:", md.fence("\n".join(acl.lines()))] if acl else []),
            *([f"- WAF IP set {md.code(ip_set.ref.name)}: {', '.join(ip_set.addresses) or '(empty)'}"] if ip_set else []),
            *[f"- **Warning:** {md.escape(n)}" for n in notes],
        ]),
    )


def isolate_plan(spec: AwsAccountSpec, instances: list[InstanceFact]) -> Plan:
    """Every network interface of each affected instance gets only the isolation group."""
    assert spec.isolation_group_id is not None
    group = spec.isolation_group_id
    todo = [i for i in instances if any(e.groups != [group] for e in i.interfaces)]
    ops = [IsolateInstance(aws=spec.access, instance_id=i.instance_id, isolation_group_id=group,
                           interfaces=[e for e in i.interfaces if e.groups != [group]]) for i in todo]
    return Plan(
        kind="isolate-hosts",
        title=f"Isolate {len(ops)} instance(s) in {spec.account} with {group}: "
        + ", ".join(i.instance_id for i in todo),
        target=f"AWS account {spec.account} ({spec.access.region}), EC2",
        operations=ops,
        preconditions=[aws_target_unchanged(spec), *[
            _still(spec, AwsProbe(kind="eni-groups", subject=e.network_interface_id, value=sorted(e.groups)),
                   f"interface {e.network_interface_id} of {op.instance_id} still has {', '.join(e.groups)}")
            for op in ops for e in op.interfaces]],
        undo="; ".join(op.undo_line() for op in ops),
        details="\n".join(["**Prior state:**", ""] + [
            f"- {md.code(i.instance_id)} ({i.state}): " + "; ".join(
                f"{e.network_interface_id}: {', '.join(e.groups)}" for e in i.interfaces)
            + f"; volumes {', '.join(i.volumes) or 'none'}" for i in instances]),
    )


def remediate_plan(spec: AwsAccountSpec, keys: list[AccessKeyFact], run_key: str) -> Plan:
    """Rotate every compromised key (new key first, confirmed, then the old one deleted), then
    run the account's patch command."""
    ops: list[RotateAccessKey | PatchCommand] = [
        RotateAccessKey(aws=spec.access, user=k.user, old_access_key_id=k.access_key_id, old_status=k.status,
                        new_credentials_block=f"rotated-{k.user.lower()}-{run_key[:8]}".replace("_", "-").replace(".", "-"))
        for k in keys
    ]
    if spec.patch_command:
        ops.append(PatchCommand(command=spec.patch_command, cwd=spec.patch_cwd, timeout_seconds=spec.patch_timeout_seconds))
    full = [k.user for k in keys if k.user_key_count >= 2]
    return Plan(
        kind="rotate-credentials",
        title=f"Rotate {len(keys)} compromised key(s) in {spec.account}"
        + (" and run the patch command" if spec.patch_command else ""),
        target=f"AWS account {spec.account} ({spec.access.region}), IAM" + (f"; patch in {spec.patch_cwd}" if spec.patch_command else ""),
        operations=ops,
        preconditions=[aws_target_unchanged(spec), *[
            _still(spec, AwsProbe(kind="access-key-status", subject=k.access_key_id, context={"user": k.user},
                                  value=[k.status]), f"access key {k.access_key_id} of {k.user} is still {k.status}")
            for k in keys]],
        undo="; ".join(op.undo_line() for op in ops),
        details="\n".join([
            "The old keys are deleted only after each new key answered `sts get-caller-identity` as its owner. "
            "The new keys are saved in AwsCredentials blocks (named above); they are never shown or logged.",
            *[f"- **Warning:** {md.code(u)} already has two keys: IAM allows two, so the rotation will fail "
              "until one is removed" for u in full],
        ]),
    )


def assess_scope(activity: list[KeyActivity], contained_at: datetime, since: datetime | None) -> ScopeAssessment:
    """What was accessed, which resources, from where, and for how long (from the first sign
    of use to containment). Says plainly what could not be known."""
    events = [e for a in activity for e in a.events]
    starts = [e.at for e in events] + [a.key.last_used_at for a in activity if a.key.last_used_at]
    if since is not None:
        starts.append(since)
    counts: dict[str, int] = {}
    for e in events:
        name = f"{e.event_source}:{e.event_name}" if e.event_source else e.event_name
        counts[name] = counts.get(name, 0) + 1
    gaps = [f"{a.key.access_key_id}: no {a.source} record ({a.unavailable_reason}); only IAM's last use is known"
            for a in activity if not a.available]
    return ScopeAssessment(
        window_start=min(starts) if starts else None, window_end=contained_at, activity=activity,
        resources_touched=sorted({r for e in events for r in e.resources}), event_counts=dict(sorted(counts.items())),
        source_ips=sorted({e.source_ip for e in events if e.source_ip}), gaps=gaps,
    )


# --- databases (Data Corruption, Database Rollback) ---------------------------------------


def database_unchanged(spec: DatabaseSpec) -> Precondition:
    return Precondition(check="database-target-unchanged", database=spec.model_copy(update={"reading": ""}),
                        description=f"the database target block {spec.block!r} is unchanged "
                        f"(fingerprint {spec.fingerprint()[:12]})")


def databases_present(spec: DatabaseSpec, *names: str) -> Precondition:
    return Precondition(check="databases-present", database=spec.model_copy(update={"reading": ""}),
                        present=list(names), description=f"databases {', '.join(names)} exist on {spec.server}")


def stop_writes_plan(spec: DatabaseSpec, state: WriteState, run_key: str) -> Plan:
    roles = sorted(r for r, login in state.roles_login.items() if login)
    return Plan(
        kind="stop-writes",
        title=f"Stop writes to {spec.database} ({spec.service})",
        target=f"database {spec.database} on {spec.server}",
        operations=[StopWrites(block=spec.block, database=spec.database, roles=roles, run_key=run_key)],
        preconditions=[database_unchanged(spec)],
        undo=f"ALTER DATABASE {spec.database} RESET default_transaction_read_only; "
        + "".join(f"ALTER ROLE {r} LOGIN; " for r in roles)
        + "(the procedure offers this after a rejected swap)",
        details="\n".join([
            f"Now: read-only default {'on' if state.read_only_default else 'off'}, "
            f"{state.sessions} client session(s); roles that can log in: {', '.join(roles) or 'none'}.",
            "",
            "Reads by other roles go on (read-only). The application roles cannot log in anywhere on this "
            "server until writes are allowed again.",
        ]),
    )


def pick_backup(backups: list[BackupRef], started_at: datetime | None, named: str | None) -> BackupRef | None:
    """The backup named (its key or file name), else the newest taken before the corruption
    started (the newest at all if that is unknown). Forensic dumps of this procedure never count
    as good."""
    if named:
        return next((b for b in backups if b.key == named or b.key.rsplit("/", 1)[-1] == named), None)
    good = [b for b in backups if "-forensic-" not in b.key and (started_at is None or b.taken_at < started_at)]
    return max(good, key=lambda b: b.taken_at, default=None)


def scratch_name(spec: DatabaseSpec, run_key: str) -> str:
    return f"{spec.database}_restore_{run_key.replace('-', '')[:8]}"[:63]


def restore_plan(spec: DatabaseSpec, assessment: Assessment | None, backup: BackupRef, run_key: str) -> Plan:
    scratch = scratch_name(spec, run_key)
    found = ""
    if assessment is not None:
        found = "\n".join([
            "**What the integrity checks found in the live database:**",
            "",
            *[f"- {md.escape(c.name)} ({md.code(c.table)}): {c.bad_rows} bad rows" for c in assessment.checks],
            "",
            f"Corruption started: {assessment.started_at.isoformat() if assessment.started_at else 'unknown'}",
            "",
            "**Backups, newest first:**",
            "",
            *[f"- {md.escape(b.label)}{'  ← this one' if b.key == backup.key else ''}" for b in assessment.backups],
        ])
    return Plan(
        kind="restore-to-scratch",
        title=f"Restore {spec.database} from the backup of {backup.taken_at:%Y-%m-%d %H:%M:%S} UTC into {scratch}",
        target=f"new database {scratch} on {spec.server} (the live database {spec.database} is not touched)",
        operations=[RestoreToScratch(block=spec.block, backup=backup, scratch=scratch, jobs=spec.restore_jobs,
                                     run_key=run_key)],
        preconditions=[database_unchanged(spec)],
        undo=f"nothing to undo on {spec.database}; {scratch} is a new database (sevflow never drops one: "
        f"DROP DATABASE {scratch} by hand when done)",
        details=found,
    )


def swap_plan(spec: DatabaseSpec, verification: Verification, stopped_roles: list[str], run_key: str,
              now: datetime) -> Plan:
    keep_as = f"{spec.database}_corrupt_{now:%Y%m%d%H%M%S}"[:63]
    differing = verification.differing_tables()
    lines = [
        f"**Restored copy {md.code(verification.restored)}**: integrity checks "
        + ("clean" if verification.clean else "**NOT clean**: " + ", ".join(
            f"{c.name} {c.bad_rows}" for c in verification.checks if c.bad_rows)),
        "",
        "| table | live rows | restored rows | same checksum |",
        "|---|---|---|---|",
    ]
    restored = {t.table: t for t in verification.restored_tables}
    for t in verification.live_tables:
        r = restored.get(t.table)
        lines.append(f"| {md.escape(t.table)} | {t.rows} | {r.rows if r else '—'} | "
                     f"{'yes' if r and r.checksum == t.checksum else 'no'} |")
    lines += ["", f"**Gap: what the swap loses** (rows written in {spec.database} after the backup of "
              f"{verification.backup_taken_at:%Y-%m-%d %H:%M:%S} UTC):", ""]
    lines += [f"- {md.escape(g.table)}: {g.rows} rows (by {md.code(g.column)}; newest "
              f"{g.newest.isoformat() if g.newest else '—'})" for g in verification.gap] or ["- no timestamp columns configured"]
    for table in differing:
        chunks = verification.differing_chunks(table)
        if chunks:
            lines.append(f"- {md.escape(table)} differs in key ranges starting at {', '.join(chunks[:20])}")
    return Plan(
        kind="swap-database",
        title=f"Swap the restored copy in as {spec.database} and allow writes again",
        target=f"databases {spec.database} and {verification.restored} on {spec.server}",
        operations=[
            SwapDatabase(block=spec.block, live=spec.database, restored=verification.restored, keep_as=keep_as,
                         run_key=run_key),
            AllowWrites(block=spec.block, database=spec.database, roles=stopped_roles, run_key=run_key),
        ],
        preconditions=[database_unchanged(spec), databases_present(spec, spec.database, verification.restored)],
        undo=f"swap back: ALTER DATABASE {spec.database} RENAME TO <other>; ALTER DATABASE {keep_as} RENAME TO "
        f"{spec.database} (the corrupted database is kept as {keep_as}; sevflow never drops it)",
        details="\n".join(lines),
    )


def allow_writes_plan(spec: DatabaseSpec, stopped_roles: list[str], run_key: str, why: str) -> Plan:
    return Plan(
        kind="allow-writes",
        title=f"Allow writes to {spec.database} again, unchanged (no swap)",
        target=f"database {spec.database} on {spec.server}",
        operations=[AllowWrites(block=spec.block, database=spec.database, roles=stopped_roles, run_key=run_key)],
        preconditions=[database_unchanged(spec)],
        undo="run data-corruption again to stop writes",
        details=md.escape(why),
    )


def migration_rollback_plan(spec: DatabaseSpec, migration: str, status: str) -> Plan:
    assert spec.migration_rollback_command
    command = spec.migration_rollback_command.replace("{migration}", migration)
    return Plan(
        kind="migration-rollback",
        title=f"Roll back migration {migration} of {spec.database}",
        target=f"database {spec.database} on {spec.server}, with {spec.migration_tool or 'the configured commands'}",
        operations=[MigrationRollback(block=spec.block, migration=migration, command=command,
                                      cwd=spec.migration_cwd or ".", timeout_seconds=spec.command_timeout_seconds,
                                      status_before=status)],
        preconditions=[database_unchanged(spec)],
        undo=f"apply migration {migration} again with the migration tool",
        details="**Migration status now:**\n\n" + md.fence(status or "(no output)"),
    )
