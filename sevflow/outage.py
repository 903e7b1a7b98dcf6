"""Production System Down: what the facts say, decided without I/O.

The steps of `production-system-down` gather facts (probes from every vantage point, the
control URL, dependencies, logs, the deployed repository's history, alerts); the functions
here decide from them:

- :func:`probe_targets` — which URL to ask from which vantage point (direct, or through an
  external probe endpoint that is asked `?url=<health URL>` and answers with that URL's status);
- :func:`judge_outage` — is the outage confirmed from several sources, and not a local problem;
- :func:`assess_scope` — what is affected, since when, how many users;
- :func:`pick_error_lines`, :func:`deploys_in_window` — what diagnosis found;
- :func:`choose_remedy` — rollback, failover, wait or hotfix;
- :func:`judge_watch` — did the fix hold while it was watched.

Pure: no I/O.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from sevflow.versions import CommitInfo

DIRECT = "direct"
DEFAULT_ERROR_PATTERN = r"(?i)\b(error|exception|fatal|critical|traceback|panic|refused|timed? ?out)\b"
MAX_ERROR_LINES = 40


class ProbeTarget(BaseModel):
    """One question: ask `url` from `vantage` (the health URL `checks`)."""

    vantage: str = Field(description="`direct`, or the probe endpoint's address")
    url: str = Field(description="what is actually requested")
    checks: str = Field(description="the health URL this request is about")
    send_token: bool = Field(default=False, description="send the service's health-check token (direct only)")


class ProbeResult(BaseModel):
    """One answer. `answered` is False when the vantage point itself could not be asked
    (a probe endpoint that is down tells nothing about the service)."""

    vantage: str
    checks: str
    ok: bool
    answered: bool
    status_code: int | None = None
    error: str = ""
    at: datetime
    elapsed_seconds: float = 0.0


class ProbeRound(BaseModel):
    """Every vantage point asked about every health URL at once, plus the control URL."""

    results: list[ProbeResult]
    control: ProbeResult | None = None
    started_at: datetime
    elapsed_seconds: float


class OutageVerdict(BaseModel):
    confirmed: bool
    local_problem: bool = False
    summary: str
    down_from: list[str] = Field(default_factory=list, description="vantage points that see it down")
    up_from: list[str] = Field(default_factory=list, description="vantage points that see it up")
    silent: list[str] = Field(default_factory=list, description="vantage points that could not be asked")
    failing_urls: list[str] = Field(default_factory=list)
    first_failure_at: datetime | None = None


class Scope(BaseModel):
    """ASSESS the scope: what is affected, how many users, since when."""

    failing_endpoints: list[str]
    failing_dependents: list[str] = Field(default_factory=list)
    healthy_dependents: list[str] = Field(default_factory=list)
    since: datetime
    since_source: Literal["alert", "first failing probe"]
    users_affected: int | None = None
    alerts: list[str] = Field(default_factory=list)

    def sentence(self) -> str:
        parts = [f"Failing: {', '.join(self.failing_endpoints) or 'none'}"]
        if self.failing_dependents:
            parts.append(f"dependent services failing: {', '.join(self.failing_dependents)}")
        parts.append(f"since {self.since:%Y-%m-%d %H:%M:%S} UTC ({self.since_source})")
        parts.append(f"users affected: {self.users_affected}" if self.users_affected is not None
                     else "users affected: unknown (no metric configured)")
        return "; ".join(parts)


class LogExcerpt(BaseModel):
    source: str = Field(description="file:..., command:... or url:...; empty when none is configured")
    lines_read: int = 0
    error_lines: list[str] = Field(default_factory=list)
    error: str = Field(default="", description="why the logs could not be read")


class DependencyHealth(BaseModel):
    name: str
    url: str
    ok: bool
    detail: str = ""


class Diagnosis(BaseModel):
    """DIAGNOSE: logs, recent deployments, external dependencies."""

    logs: LogExcerpt
    recent_deploys: list[CommitInfo] = Field(default_factory=list)
    running: str = Field(default="", description="the head of the deployed branch")
    dependencies: list[DependencyHealth] = Field(default_factory=list)

    @property
    def dependencies_down(self) -> list[DependencyHealth]:
        return [d for d in self.dependencies if not d.ok]


RemedyKind = Literal["rollback", "failover", "wait", "hotfix"]


class Remedy(BaseModel):
    kind: RemedyKind
    why: str
    dependency: str | None = None


class WatchReport(BaseModel):
    held: bool
    rounds: int
    watched_seconds: float
    broke_at: datetime | None = None
    failing: list[str] = Field(default_factory=list)


# -- decisions ------------------------------------------------------------------------------


def probe_url(endpoint: str, url: str) -> str:
    """How an external probe endpoint is asked about `url`."""
    return f"{endpoint}{'&' if '?' in endpoint else '?'}url={quote(url, safe='')}"


def probe_targets(health_urls: list[str], probe_endpoints: list[str]) -> list[ProbeTarget]:
    """Every health URL from this machine (with the service's token) and through every probe
    endpoint (without it: a token is never handed to a third party)."""
    targets = [ProbeTarget(vantage=DIRECT, url=url, checks=url, send_token=True) for url in health_urls]
    targets += [ProbeTarget(vantage=endpoint, url=probe_url(endpoint, url), checks=url)
                for endpoint in probe_endpoints for url in health_urls]
    return targets


def judge_outage(probes: ProbeRound) -> OutageVerdict:
    """Confirmed when the control URL answers (so this machine's own network works) and a
    majority of the vantage points that answered see at least one health URL failing."""
    by_vantage: dict[str, list[ProbeResult]] = {}
    for result in probes.results:
        by_vantage.setdefault(result.vantage, []).append(result)
    silent = [v for v, rs in by_vantage.items() if not any(r.answered for r in rs)]
    down = [v for v, rs in by_vantage.items() if v not in silent and any(r.answered and not r.ok for r in rs)]
    up = [v for v in by_vantage if v not in silent and v not in down]
    failing = sorted({r.checks for r in probes.results if r.answered and not r.ok})
    first = min((r.at for r in probes.results if r.answered and not r.ok), default=None)
    control = probes.control
    base = dict(down_from=down, up_from=up, silent=silent, failing_urls=failing, first_failure_at=first)
    if control is not None and not control.ok:
        # The control URL always answers: if it does not, the problem is here, not there.
        return OutageVerdict(confirmed=False, local_problem=True, summary=(
            f"Not confirmed: the control URL {control.checks} does not answer from here "
            f"({control.error or control.status_code}), so this looks like a local problem "
            "(this machine's network or DNS). Nothing was changed."), **base)
    answered = len(down) + len(up)
    if answered == 0:
        return OutageVerdict(confirmed=False, summary=(
            "Not confirmed: no vantage point could be asked. Nothing was changed."), **base)
    if len(down) * 2 > answered:
        return OutageVerdict(confirmed=True, summary=(
            f"Outage confirmed from {len(down)} of {answered} source(s) ({', '.join(down)}): "
            f"{', '.join(failing)} failing; the control URL answers."), **base)
    if not down:
        text = (f"Not confirmed: every source that answered ({', '.join(up)}) sees "
                "the service healthy. Nothing was changed.")
    else:
        text = (f"Not confirmed: only {len(down)} of {answered} source(s) ({', '.join(down)}) see a failure; "
                f"{', '.join(up)} see the service healthy. Nothing was changed.")
    return OutageVerdict(confirmed=False, summary=text, **base)


def outage_start(alert_starts: list[datetime], first_failure: datetime | None, fallback: datetime) -> tuple[datetime, Literal["alert", "first failing probe"]]:
    """Since when: the earliest alert's start, else the first failing probe."""
    if alert_starts:
        return min(alert_starts), "alert"
    return first_failure or fallback, "first failing probe"


def assess_scope(verdict: OutageVerdict, dependents: list[ProbeResult], alert_starts: list[datetime],
                 alerts: list[str], users_affected: int | None, now: datetime) -> Scope:
    since, source = outage_start(alert_starts, verdict.first_failure_at, now)
    return Scope(
        failing_endpoints=verdict.failing_urls,
        failing_dependents=[r.checks for r in dependents if not r.ok],
        healthy_dependents=[r.checks for r in dependents if r.ok],
        since=since, since_source=source, users_affected=users_affected, alerts=alerts,
    )


def parse_metric(text: str) -> int | None:
    """A users metric: a bare number, or JSON with `value` (or `users`). None if neither."""
    import json

    text = text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = text
    if isinstance(data, dict):
        data = data.get("value", data.get("users"))
    try:
        return int(float(data))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def pick_error_lines(lines: list[str], pattern: str = "") -> list[str]:
    """The lines that look like errors (the profile's pattern, or a sensible default), newest last."""
    regex = re.compile(pattern or DEFAULT_ERROR_PATTERN)
    found = [line.rstrip() for line in lines if regex.search(line)]
    return found[-MAX_ERROR_LINES:]


def deploys_in_window(commits: list[CommitInfo], start: datetime, window_seconds: float) -> list[CommitInfo]:
    """Commits of the deployed branch made in the window before the outage started (and
    during it: a deploy a minute after the first alert is as suspect)."""
    earliest = start - timedelta(seconds=window_seconds)
    return [c for c in commits if c.authored_at >= earliest]


def choose_remedy(diagnosis: Diagnosis, failover_configured: bool) -> Remedy:
    """The runbook's REMEDIATE: recent deploy → rollback; external → wait/failover; code bug → hotfix.

    A dependency that is down is looked at first: rolling back our own code does not bring
    someone else's service back, and the rollback would hide the real cause.
    """
    down = diagnosis.dependencies_down
    if down:
        names = ", ".join(d.name for d in down)
        if failover_configured:
            return Remedy(kind="failover", dependency=down[0].name,
                          why=f"external dependency down ({names}); a failover is configured")
        return Remedy(kind="wait", dependency=down[0].name,
                      why=f"external dependency down ({names}); no failover configured: wait for it")
    if diagnosis.recent_deploys:
        newest = diagnosis.recent_deploys[0]
        return Remedy(kind="rollback", why=(f"{len(diagnosis.recent_deploys)} deploy(s) in the window before the "
                                            f"outage, newest {newest.short} ({newest.subject})"))
    errors = len(diagnosis.logs.error_lines)
    return Remedy(kind="hotfix", why=("no recent deploy and every dependency answers: a code bug"
                                      + (f" ({errors} error line(s) in the logs)" if errors else "")))


def judge_watch(rounds: list[ProbeRound], watched_seconds: float) -> WatchReport:
    """Held when every round saw every source healthy."""
    for index, probes in enumerate(rounds, 1):
        bad = [r for r in probes.results if r.answered and not r.ok]
        if bad:
            return WatchReport(held=False, rounds=index, watched_seconds=watched_seconds,
                               broke_at=min(r.at for r in bad), failing=sorted({f"{r.checks} from {r.vantage}" for r in bad}))
    return WatchReport(held=True, rounds=len(rounds), watched_seconds=watched_seconds)


def all_healthy(probes: ProbeRound) -> bool:
    """Every source that answered sees every health URL healthy, and at least one answered."""
    answered = [r for r in probes.results if r.answered]
    return bool(answered) and all(r.ok for r in answered)


StatusState = Literal["investigating", "fixing", "monitoring", "resolved", "broke-again"]


class StatusUpdate(BaseModel):
    """One post to the status page (and one message to the stakeholders).

    Before a person approved a change, the only updates sent say that a human decision is
    awaited (`awaiting_human_decision`): nothing the run has not been allowed to do is announced.
    """

    incident_id: str
    service: str
    severity: str
    state: StatusState
    awaiting_human_decision: bool
    message: str

    @property
    def subject(self) -> str:
        return f"[{self.severity}] {self.service}: {self.state} (incident {self.incident_id})"


def investigating_update(incident_id: str, service: str, severity: str, verdict: OutageVerdict, scope: Scope) -> StatusUpdate:
    return StatusUpdate(
        incident_id=incident_id, service=service, severity=severity, state="investigating",
        awaiting_human_decision=True,
        message=(f"{service} is down ({verdict.summary}) {scope.sentence()}. We are investigating; "
                 "any change to production waits for a human decision, which is awaited."),
    )
