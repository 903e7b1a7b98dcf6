"""Asking a service, from several places at once, whether it answers (runbook, Production
System Down: "Check from multiple sources", "Confirm not a local issue", "Check external
dependencies", "Confirm system operational", "Monitor closely").

Read-only. Every request of a round is made at the same time (one thread each, bounded), so
a round takes about as long as its slowest answer, not the sum: `bench/probe.py` measures it.
Every request has a finite timeout; the health-check token goes only to the service itself
(direct probes), never through an external probe endpoint, and is never logged.
"""

from __future__ import annotations

import functools
import logging
import ssl
import time
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor

import httpx
from prefect.exceptions import MissingContextError
from prefect.logging.loggers import get_logger, get_run_logger

from sevflow.blocks.service import ServiceTarget
from sevflow.models import OutageSpec, utcnow
from sevflow.outage import (
    DIRECT,
    Scope,
    assess_scope,
    DependencyHealth,
    OutageVerdict,
    ProbeResult,
    ProbeRound,
    ProbeTarget,
    WatchReport,
    all_healthy,
    judge_outage,
    judge_watch,
    parse_metric,
    probe_targets,
)
from sevflow.tasks.common import step
from sevflow.tasks.host import mask_secrets
from sevflow.tasks.orchestrator import incident_alerts

MAX_PARALLEL = 64


@functools.lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    # Building a client's TLS context reads the CA bundle (0.2 s and more on a busy host): once
    # per process, not once per round, so a round costs what its slowest answer costs.
    return httpx.create_ssl_context()


def probe_all(targets: list[ProbeTarget], timeout: float, token_headers: dict[str, str] | None = None,
              secrets: list[str] | None = None) -> list[ProbeResult]:
    """Ask every target at once; one result per target, in the targets' order.

    A target asked directly that does not answer is a failing service; a probe endpoint that
    does not answer is a silent vantage point (`answered=False`), not a failing service.
    """
    if not targets:
        return []
    headers = token_headers or {}
    masked = secrets or []
    limits = httpx.Limits(max_connections=MAX_PARALLEL, max_keepalive_connections=MAX_PARALLEL)
    with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, limits=limits,
                      verify=_tls()) as client:

        def ask(target: ProbeTarget) -> ProbeResult:
            at = utcnow()
            started = time.monotonic()
            try:
                response = client.get(target.url, headers=headers if target.send_token else None)
            except httpx.HTTPError as exc:
                return ProbeResult(vantage=target.vantage, checks=target.checks, ok=False,
                                   answered=target.vantage == DIRECT, at=at,
                                   error=mask_secrets(f"{type(exc).__name__}: {exc}", masked),
                                   elapsed_seconds=round(time.monotonic() - started, 3))
            ok = 200 <= response.status_code < 300
            # A probe endpoint answering 5xx about itself (502/504 from its own proxy) is
            # still an answer about the target: it could not reach it.
            return ProbeResult(vantage=target.vantage, checks=target.checks, ok=ok, answered=True, at=at,
                               status_code=response.status_code, error="" if ok else f"HTTP {response.status_code}",
                               elapsed_seconds=round(time.monotonic() - started, 3))

        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets)), thread_name_prefix="probe") as pool:
            return list(pool.map(ask, targets))


def _token(token_block: str | None) -> tuple[dict[str, str], list[str]]:
    if not token_block:
        return {}, []
    target = ServiceTarget.for_service(token_block)
    return target.health_check_headers(), target.secret_values()


def _round(health_urls: list[str], profile: OutageSpec, token_block: str | None) -> ProbeRound:
    headers, secrets = _token(token_block)
    started_at, started = utcnow(), time.monotonic()
    targets = probe_targets(health_urls, profile.probe_endpoints)
    control = ProbeTarget(vantage=DIRECT, url=profile.control_url, checks=profile.control_url)
    results = probe_all([*targets, control], profile.probe_timeout_seconds, headers, secrets)
    return ProbeRound(results=results[:-1], control=results[-1], started_at=started_at,
                      elapsed_seconds=round(time.monotonic() - started, 3))


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.tasks.probes")


@step("VERIFY the outage")
def verify_outage(health_urls: list[str], profile: OutageSpec, token_block: str | None, phase: str) -> tuple[ProbeRound, OutageVerdict]:
    """Check from multiple sources (every health URL from here and through every probe
    endpoint, all at once) and confirm it is not a local issue (the control URL). Changes nothing."""
    probes = _round(health_urls, profile, token_block)
    verdict = judge_outage(probes)
    _logger().info("%s (%d probes in %.2f s)", verdict.summary, len(probes.results) + 1, probes.elapsed_seconds)
    return probes, verdict


@step("ASSESS the scope")
def assess_the_scope(profile: OutageSpec, verdict: OutageVerdict, flow_run_id: str) -> Scope:
    """What's affected (failing endpoints, dependent services, asked all at once), how many
    users (the profile's metric URL), when it started (the incident's alerts, else the first
    failing probe). Changes nothing."""
    targets = [ProbeTarget(vantage=DIRECT, url=url, checks=name) for name, url in profile.dependent_services.items()]
    dependents = probe_all(targets, profile.probe_timeout_seconds)
    users: int | None = None
    if profile.users_metric_url:
        try:
            response = httpx.get(profile.users_metric_url, timeout=profile.probe_timeout_seconds)
            users = parse_metric(response.text) if response.is_success else None
        except httpx.HTTPError as exc:
            _logger().warning("The users metric %s did not answer: %s", profile.users_metric_url, type(exc).__name__)
    alerts = incident_alerts(flow_run_id)
    starts = [datetime.fromisoformat(a.details["starts_at"]) for a in alerts if a.details.get("starts_at")]
    scope = assess_scope(verdict, dependents, starts, [a.description for a in alerts], users, utcnow())
    _logger().info("Scope: %s", scope.sentence())
    return scope


@step("Check external dependencies")
def check_dependencies(profile: OutageSpec, cycle: int) -> list[DependencyHealth]:
    """Ask each external dependency's health URL, all at once. Changes nothing."""
    names = list(profile.dependencies)
    targets = [ProbeTarget(vantage=DIRECT, url=profile.dependencies[n], checks=n) for n in names]
    results = probe_all(targets, profile.probe_timeout_seconds)
    found = [DependencyHealth(name=n, url=profile.dependencies[n], ok=r.ok, detail=r.error or str(r.status_code))
             for n, r in zip(names, results)]
    for dep in found:
        (_logger().info if dep.ok else _logger().warning)("Dependency %s (%s): %s", dep.name, dep.url,
                                                          "answers" if dep.ok else f"DOWN ({dep.detail})")
    return found


@step("wait for the dependency")
def wait_for_dependency(profile: OutageSpec, name: str, cycle: int) -> bool:
    """Ask the dependency again and again until it answers or `dependency_wait_seconds` pass.
    Changes nothing; True if it came back."""
    url = profile.dependencies[name]
    deadline = time.monotonic() + profile.dependency_wait_seconds
    while True:
        [result] = probe_all([ProbeTarget(vantage=DIRECT, url=url, checks=name)], profile.probe_timeout_seconds)
        if result.ok or time.monotonic() >= deadline:
            return result.ok
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))


@step("Confirm system operational")
def confirm_operational(health_urls: list[str], profile: OutageSpec, token_block: str | None, cycle: int) -> ProbeRound:
    """VERIFY fix: every source, every health URL, again and again within the profile's
    budget until all answer healthy in one round. Changes nothing; returns the last round."""
    deadline = time.monotonic() + profile.verify_budget_seconds
    delay = 0.25
    while True:
        probes = _round(health_urls, profile, token_block)
        if all_healthy(probes) or time.monotonic() >= deadline:
            return probes
        time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 2, 5.0)


@step("Monitor closely")
def monitor_closely(health_urls: list[str], profile: OutageSpec, token_block: str | None, cycle: int) -> WatchReport:
    """Ask every source every `watch_interval_seconds` for `watch_seconds`; stop at the first
    round that sees a failure. Changes nothing."""
    started = time.monotonic()
    rounds: list[ProbeRound] = []
    while True:
        probes = _round(health_urls, profile, token_block)
        rounds.append(probes)
        if not all_healthy(probes):
            break
        left = profile.watch_seconds - (time.monotonic() - started)
        if left <= 0:
            break
        time.sleep(min(profile.watch_interval_seconds, left))
    report = judge_watch(rounds, round(time.monotonic() - started, 3))
    (_logger().info if report.held else _logger().error)(
        "Watched %.1f s, %d round(s): %s", report.watched_seconds, report.rounds,
        "held" if report.held else f"broke again ({', '.join(report.failing)})")
    return report
