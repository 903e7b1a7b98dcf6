"""Memory/Disk Full decisions, pure: leak or legitimate, which process, what each plan says."""

from __future__ import annotations

from sevflow import plans
from sevflow.models import FileEntry, HostFacts, HostSpec, MemoryTrend, MemoryUsage, Plan, ProcessInfo

MiB = 1024 * 1024


def spec(**fields: object) -> HostSpec:
    base: dict[str, object] = dict(block="web-1", host="web-1", kill_candidates=["*worker*"],
                                   kill_min_rss_bytes=100 * MiB, leak_min_growth_bytes=2 * MiB)
    return HostSpec(**(base | fields))


def trend(pid: int, samples: list[int], verdict: str) -> MemoryTrend:
    return MemoryTrend(process=ProcessInfo(pid=pid, start_time=1000 + pid, boot_id="b" * 36, command=f"worker {pid}",
                                           rss_bytes=samples[0], uid=0),
                       samples=samples, window_seconds=3, verdict=verdict)  # type: ignore[arg-type]


def facts(trends: list[MemoryTrend], used: float = 40.0, killable: list[int] | None = None) -> HostFacts:
    return HostFacts(host="web-1", memory=MemoryUsage(total_bytes=1000, available_bytes=600, used_percent=used),
                     trends=trends, killable=killable if killable is not None else [t.process.pid for t in trends])


def test_steady_growth_is_a_leak_and_anything_else_is_legitimate() -> None:
    assert plans.judge_memory_trend([100 * MiB, 103 * MiB, 106 * MiB, 109 * MiB], 2 * MiB) == "leak"
    assert plans.judge_memory_trend([100 * MiB] * 4, 2 * MiB) == "legitimate"
    assert plans.judge_memory_trend([100 * MiB, 110 * MiB, 90 * MiB, 120 * MiB], 2 * MiB) == "legitimate"
    assert plans.judge_memory_trend([100 * MiB, 100 * MiB + 4096], 2 * MiB) == "legitimate"


def test_the_leaking_killable_process_is_chosen_and_steady_ones_only_under_pressure() -> None:
    leak = trend(10, [200 * MiB, 210 * MiB], "leak")
    big = trend(11, [900 * MiB, 900 * MiB], "legitimate")
    assert plans.choose_memory_hog(spec(), facts([leak, big])) == leak
    assert plans.choose_memory_hog(spec(), facts([big])) is None  # legitimate, no pressure: not killed
    assert plans.choose_memory_hog(spec(), facts([big], used=95.0)) == big
    assert plans.choose_memory_hog(spec(), facts([leak], killable=[])) is None  # not in the block's globs
    small = trend(12, [10 * MiB, 20 * MiB], "leak")
    assert plans.choose_memory_hog(spec(), facts([small])) is None


def test_plans_show_the_bytes_they_free_and_hold_every_file() -> None:
    files = [FileEntry(path=f"f{i}", size=4096, freed_bytes=4096, inode=i, device=1, mtime_ns=1) for i in range(50)]
    plan = plans.temp_files_plan(spec(temp_allow_list=["/tmp/x"]), [("/tmp/x", files), ("/tmp/empty", [])])
    assert plan is not None and "frees 200.0 KiB (204800 bytes)" in plan.title
    assert len(plan.operations) == 1 and len(plan.operations[0].files) == 50
    text = plan.describe()
    assert "rm -- /tmp/x/f0" in text and "and 10 more files" in text
    assert Plan.model_validate(plan.model_dump(mode="json")).digest == plan.digest
    assert plans.temp_files_plan(spec(), [("/tmp/x", [])]) is None


def test_the_kill_plan_names_pid_start_time_and_boot() -> None:
    leak = trend(10, [200 * MiB, 210 * MiB], "leak")
    plan = plans.kill_process_plan(spec(), leak)
    [pre] = [p for p in plan.preconditions if p.check == "process-unchanged"]
    assert (pre.pid, pre.start_time, pre.boot_id) == (10, 1010, "b" * 36)
    assert "kill -TERM 10" in plan.describe()


def test_prevention_asks_only_for_what_is_missing() -> None:
    s = spec(prometheus_rules_dir="/etc/prometheus/rules")
    full = plans.prevention_plan(s, "dep-id", False, False, False, "sevflow.host.web-1", "sevflow.host.pressure")
    assert full is not None
    assert [op.op for op in full.operations] == ["create-automation", "write-alert-rules", "schedule-cleanup"]
    assert "node_memory_MemAvailable_bytes" in full.operations[1].content
    assert plans.prevention_plan(s, "dep-id", True, True, True, "r", "e") is None
    only = plans.prevention_plan(spec(), "dep-id", True, False, False, "r", "e")
    assert only is not None and [op.op for op in only.operations] == ["schedule-cleanup"]


def test_the_cleanup_schedule_names_the_memory_disk_full_deployment() -> None:
    from sevflow.deployments import deployment_path

    assert plans.MONITORING_DEPLOYMENT == deployment_path("memory-disk-full")
