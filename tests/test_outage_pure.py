"""Production System Down's decisions, without a server: is it an outage, what is the scope,
which remedy, did the fix hold; and the plans it proposes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sevflow import plans
from sevflow.models import OutageSpec, ServiceSpec
from sevflow.outage import (
    DIRECT,
    Diagnosis,
    DependencyHealth,
    LogExcerpt,
    ProbeResult,
    ProbeRound,
    all_healthy,
    assess_scope,
    choose_remedy,
    deploys_in_window,
    judge_outage,
    judge_watch,
    parse_metric,
    pick_error_lines,
    probe_targets,
    probe_url,
)
from sevflow.versions import CommitInfo, RollbackPreview

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
HEALTH = "http://shop.local/api/health"
PROBE_A, PROBE_B = "http://probe-a.local/check", "http://probe-b.local/check"


def result(vantage: str, ok: bool, answered: bool = True, at: datetime = NOW) -> ProbeResult:
    return ProbeResult(vantage=vantage, checks=HEALTH, ok=ok, answered=answered, at=at,
                       status_code=200 if ok else (503 if answered else None))


def round_of(*results: ProbeResult, control: bool = True) -> ProbeRound:
    return ProbeRound(results=list(results), control=ProbeResult(vantage=DIRECT, checks="http://control", ok=control,
                                                                 answered=True, at=NOW),
                      started_at=NOW, elapsed_seconds=0.1)


def commit(label: str, age: timedelta) -> CommitInfo:
    return CommitInfo(sha=label * 40, short=label * 7, subject=f"Release {label}", author="Ada", authored_at=NOW - age)


def test_every_health_url_is_asked_directly_and_through_every_probe_endpoint() -> None:
    targets = probe_targets([HEALTH, HEALTH + "2"], [PROBE_A, "http://probe-b.local/check?region=eu"])
    assert [(t.vantage, t.send_token) for t in targets[:2]] == [(DIRECT, True), (DIRECT, True)]
    assert targets[2].url == "http://probe-a.local/check?url=http%3A%2F%2Fshop.local%2Fapi%2Fhealth"
    assert targets[4].url.startswith("http://probe-b.local/check?region=eu&url=")
    assert not any(t.send_token for t in targets[2:])  # the token never goes to a third party
    assert len(targets) == 6
    assert probe_url(PROBE_A, "http://x/?a=1&b=2") == f"{PROBE_A}?url=http%3A%2F%2Fx%2F%3Fa%3D1%26b%3D2"


def test_an_outage_is_confirmed_by_a_majority_of_the_sources_that_answered() -> None:
    verdict = judge_outage(round_of(result(DIRECT, False), result(PROBE_A, False), result(PROBE_B, True)))
    assert verdict.confirmed and verdict.down_from == [DIRECT, PROBE_A] and verdict.up_from == [PROBE_B]
    assert verdict.failing_urls == [HEALTH] and verdict.first_failure_at == NOW
    # A silent probe endpoint is not a vote either way.
    assert judge_outage(round_of(result(DIRECT, False), result(PROBE_A, False, answered=False))).confirmed


def test_only_this_machine_seeing_it_down_is_not_an_outage() -> None:
    verdict = judge_outage(round_of(result(DIRECT, False), result(PROBE_A, True), result(PROBE_B, True)))
    assert not verdict.confirmed and "only 1 of 3" in verdict.summary
    healthy = judge_outage(round_of(result(DIRECT, True), result(PROBE_A, True)))
    assert not healthy.confirmed and "healthy" in healthy.summary and "Nothing was changed" in healthy.summary


def test_a_silent_control_url_means_a_local_problem() -> None:
    verdict = judge_outage(round_of(result(DIRECT, False), result(PROBE_A, False), control=False))
    assert not verdict.confirmed and verdict.local_problem and "local problem" in verdict.summary
    nobody = judge_outage(round_of(result(PROBE_A, False, answered=False)))
    assert not nobody.confirmed and "no vantage point" in nobody.summary


def test_scope_starts_at_the_earliest_alert_else_at_the_first_failing_probe() -> None:
    verdict = judge_outage(round_of(result(DIRECT, False, at=NOW - timedelta(seconds=5))))
    dependents = [ProbeResult(vantage=DIRECT, checks="billing", ok=False, answered=True, at=NOW),
                  ProbeResult(vantage=DIRECT, checks="search", ok=True, answered=True, at=NOW)]
    scope = assess_scope(verdict, dependents, [], [], 1234, NOW)
    assert (scope.since, scope.since_source) == (NOW - timedelta(seconds=5), "first failing probe")
    assert scope.failing_dependents == ["billing"] and scope.healthy_dependents == ["search"]
    assert "users affected: 1234" in scope.sentence()
    alerted = assess_scope(verdict, [], [NOW - timedelta(minutes=9), NOW - timedelta(minutes=3)], ["a"], None, NOW)
    assert (alerted.since, alerted.since_source) == (NOW - timedelta(minutes=9), "alert")
    assert "unknown" in alerted.sentence()


def test_metrics_and_error_lines() -> None:
    assert parse_metric("42\n") == 42 and parse_metric('{"value": 7.0}') == 7 and parse_metric('{"users": 3}') == 3
    assert parse_metric("n/a") is None and parse_metric("{}") is None
    lines = ["GET / 200", "ERROR db pool exhausted", "Traceback (most recent call last):", "ok", "fatal: x"]
    assert pick_error_lines(lines) == ["ERROR db pool exhausted", "Traceback (most recent call last):", "fatal: x"]
    assert pick_error_lines(lines, r"pool") == ["ERROR db pool exhausted"]


def test_recent_deploys_are_those_in_the_window_before_the_outage() -> None:
    history = [commit("c", timedelta(minutes=10)), commit("b", timedelta(hours=5)), commit("a", timedelta(days=3))]
    assert [c.short for c in deploys_in_window(history, NOW, 3600)] == ["ccccccc"]
    assert deploys_in_window(history, NOW - timedelta(hours=6), 600) == [history[0], history[1]]


def diagnosis(deploys: int = 0, down: bool = False, errors: int = 0) -> Diagnosis:
    return Diagnosis(logs=LogExcerpt(source="file:x", error_lines=["ERROR"] * errors),
                     recent_deploys=[commit("c", timedelta(minutes=1))] * deploys,
                     dependencies=[DependencyHealth(name="payments", url="http://p", ok=not down)])


@pytest.mark.parametrize(("facts", "failover", "kind"), [
    (dict(deploys=1), False, "rollback"),
    (dict(down=True), True, "failover"),
    (dict(down=True), False, "wait"),
    (dict(down=True, deploys=1), True, "failover"),  # our rollback would not bring their service back
    (dict(errors=3), False, "hotfix"),
    (dict(), True, "hotfix"),
])
def test_the_remedy_follows_the_runbook(facts: dict, failover: bool, kind: str) -> None:
    remedy = choose_remedy(diagnosis(**facts), failover)
    assert remedy.kind == kind
    assert remedy.dependency == ("payments" if facts.get("down") else None)


def test_a_fix_holds_only_if_every_round_was_healthy() -> None:
    good = round_of(result(DIRECT, True), result(PROBE_A, True))
    bad = round_of(result(DIRECT, True), result(PROBE_A, False, at=NOW + timedelta(seconds=3)))
    assert judge_watch([good, good], 1.0).held
    broke = judge_watch([good, bad, good], 1.0)
    assert not broke.held and broke.rounds == 2 and broke.broke_at == NOW + timedelta(seconds=3)
    assert broke.failing == [f"{HEALTH} from {PROBE_A}"]
    assert all_healthy(good) and not all_healthy(bad)
    assert not all_healthy(round_of(result(PROBE_A, True, answered=False)))


SPEC = ServiceSpec(block="shop", service="shop", repository="/srv/shop", branch="main", build_command="make",
                   deploy_command="make deploy", health_check_urls=[HEALTH], secret_env=["DEPLOY_TOKEN"])
PROFILE = OutageSpec(block="shop", service="shop", control_url="http://control", failover_command="./failover.sh",
                     dependencies={"payments": "http://p"})


def test_the_failover_plan_runs_the_profiles_command_once_the_profile_is_unchanged() -> None:
    plan = plans.failover_plan(PROFILE, SPEC, "payments", "http://p", "payments down")
    [op] = plan.operations
    assert (op.kind, op.command, op.cwd, op.profile_fingerprint) == ("failover", "./failover.sh", "/srv/shop",
                                                                     PROFILE.fingerprint())
    assert plan.kind == "failover" and [p.check for p in plan.preconditions] == ["profile-unchanged"]
    assert "(cd /srv/shop && ./failover.sh)" in plan.describe()
    other = PROFILE.model_copy(update={"failover_command": "./other.sh"})
    assert plans.failover_plan(other, SPEC, "payments", "http://p", "x").digest != plan.digest
    assert PROFILE.model_copy(update={"reading": "failover-2"}).fingerprint() == PROFILE.fingerprint()
    with pytest.raises(ValueError):
        plans.failover_plan(PROFILE.model_copy(update={"failover_command": None}), SPEC, "payments", "http://p", "x")


def test_the_hotfix_plan_puts_the_named_refs_tree_on_top_of_what_runs() -> None:
    fix = commit("f", timedelta(0))
    preview = RollbackPreview(from_sha="b" * 40, to_sha=fix.sha, to_tree="t" * 40, files_changed=1, insertions=1,
                              deletions=1, diff="-broken\n+fixed\n")
    plan = plans.hotfix_plan(SPEC, fix, preview, "run-1-hotfix", "alice")
    restore, build, deploy = plan.operations
    assert (restore.expected_head, restore.source_sha, restore.source_tree) == ("b" * 40, fix.sha, "t" * 40)
    assert plan.kind == "hotfix-deploy" and (build.kind, deploy.kind) == ("build", "deploy")
    assert "+fixed" in plan.describe() and "alice" in plan.describe()
