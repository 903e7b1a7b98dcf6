"""Asking the service whether it is healthy (runbook: `curl http://localhost:3000/api/health`).

Read-only: the health checks change nothing. The decision of when to ask again is the pure
function :func:`next_poll_delay`; the step only does the asking. Every request has a finite
timeout, the health-check token travels only in the request headers (never logged), and
response bodies are recorded only as a short excerpt with every block secret masked.
"""

from __future__ import annotations

import logging
import time

import httpx
from prefect.exceptions import MissingContextError
from prefect.logging.loggers import get_logger, get_run_logger
from pydantic import BaseModel, Field

from sevflow.blocks.service import ServiceTarget
from sevflow.errors import ConfigurationError
from sevflow.models import HealthSpec
from sevflow.tasks.common import step
from sevflow.tasks.host import mask_secrets

FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 5.0
_MIN_REQUEST_TIMEOUT_SECONDS = 0.5  # even the last round of a spent budget gets a fair answer
_BODY_EXCERPT_CHARS = 200


class HealthCheck(BaseModel):
    """One URL's answer in one round."""

    url: str
    status_code: int | None = Field(description="None when no HTTP answer came back")
    ok: bool
    error: str = Field(default="", description="why it is not ok, e.g. `HTTP 503` or `ConnectError: ...`")
    body_excerpt: str = Field(default="", description=f"first {_BODY_EXCERPT_CHARS} characters, secrets masked")


class HealthReport(BaseModel):
    """The outcome of verification: whether every URL answered 2xx in the same round, and the
    last round's answers."""

    ok: bool
    attempts: int = Field(description="rounds asked (each round asks every URL once)")
    elapsed_seconds: float
    checks: list[HealthCheck]

    def line(self) -> str:
        """Each URL and what it answered, for the post-mortem's health before / after."""
        return "; ".join(f"{c.url} → {c.status_code or c.error}" for c in self.checks)


def next_poll_delay(
    *, healthy: bool, attempts: int, elapsed_seconds: float, budget_seconds: float
) -> float | None:
    """Seconds to wait before the next round, or None to stop asking.

    Stop when the last round was healthy or the budget is spent. Otherwise back off
    exponentially (0.25 s, 0.5 s, 1 s ... capped at 5 s), and never wait past the budget,
    so the last round is asked right at its end.
    """
    if healthy:
        return None
    remaining = budget_seconds - elapsed_seconds
    if remaining <= 0:
        return None
    backoff = min(FIRST_DELAY_SECONDS * 2 ** max(attempts - 1, 0), MAX_DELAY_SECONDS)
    return min(backoff, remaining)


def request_timeout(*, elapsed_seconds: float, budget_seconds: float) -> float:
    """Per-request timeout: the usual 5 s, shortened so a round does not run far past the budget."""
    remaining = budget_seconds - elapsed_seconds
    return min(REQUEST_TIMEOUT_SECONDS, max(remaining, _MIN_REQUEST_TIMEOUT_SECONDS))


@step("check health before the change", timeline=False)
def health_before(check: HealthSpec, phase: str) -> HealthReport:
    """One round of the approved plan's health checks, just before the change starts: what the
    post-mortem reports as health before. Changes nothing; an unhealthy answer is the expected
    case (it is why the change was asked for)."""
    urls = list(check.urls)
    for url in urls:
        _require_http_url(check.service, url)
    headers, secrets = _token(check)
    started = time.monotonic()
    with httpx.Client(headers=headers, timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS), follow_redirects=False) as client:
        checks = [_check(client, url, secrets, REQUEST_TIMEOUT_SECONDS) for url in urls]
    report = HealthReport(ok=all(c.ok for c in checks), attempts=1,
                          elapsed_seconds=round(time.monotonic() - started, 3), checks=checks)
    _logger().info("Health of %s before the change (%s): %s", check.service, phase, report.line())
    return report


@step("verify health")
def verify_health(check: HealthSpec, phase: str) -> HealthReport:
    """Ask every health-check URL of the plan, again and again within its budget, until all
    answer 2xx in the same round. Changes nothing.

    Returns the last round whether healthy or not: deciding what an unhealthy service means
    (fail, roll back, ask a person) is the procedure's job.
    """
    urls = list(check.urls)
    if not urls:
        raise ConfigurationError(
            f"Service {check.service!r} has no health checks: set `health_check_urls` on its "
            "sevflow Service Target block (e.g. http://localhost:3000/api/health)."
        )
    for url in urls:
        _require_http_url(check.service, url)
    logger = _logger()
    headers, secrets = _token(check)
    budget = check.budget_seconds
    logger.info(
        "Verifying health of %s (%s): %d URL(s), budget %g s", check.service, phase, len(urls), budget
    )

    started = time.monotonic()
    attempts = 0
    # Redirects are not followed: a health URL that redirects (to a login page, say) is not
    # answering as a health check should.
    with httpx.Client(
        headers=headers,
        timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS),
        follow_redirects=False,
    ) as client:
        while True:
            attempts += 1
            checks = [
                _check(
                    client,
                    url,
                    secrets,
                    request_timeout(elapsed_seconds=time.monotonic() - started, budget_seconds=budget),
                )
                for url in urls
            ]
            elapsed = time.monotonic() - started
            healthy = all(check.ok for check in checks)
            delay = next_poll_delay(
                healthy=healthy, attempts=attempts, elapsed_seconds=elapsed, budget_seconds=budget
            )
            logger.info(
                "Health round %d at %.1f s: %d/%d healthy (%s)%s",
                attempts,
                elapsed,
                sum(check.ok for check in checks),
                len(checks),
                "; ".join(f"{check.url} → {check.error or check.status_code}" for check in checks),
                f"; next round in {delay:.2f} s" if delay is not None else "",
            )
            if delay is None:
                break
            time.sleep(delay)

    report = HealthReport(ok=healthy, attempts=attempts, elapsed_seconds=round(elapsed, 3), checks=checks)
    if report.ok:
        logger.info("%s is healthy (round %d, %.1f s)", check.service, attempts, elapsed)
    else:
        logger.warning(
            "%s is NOT healthy after %d round(s) in %.1f s (budget %g s)", check.service, attempts, elapsed, budget
        )
    return report


def _check(client: httpx.Client, url: str, secrets: list[str], timeout: float) -> HealthCheck:
    try:
        response = client.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        # Refused, timed out, reset: the service is not answering yet, which is an answer.
        return HealthCheck(
            url=url, status_code=None, ok=False, error=mask_secrets(f"{type(exc).__name__}: {exc}", secrets)
        )
    ok = 200 <= response.status_code < 300
    return HealthCheck(
        url=url,
        status_code=response.status_code,
        ok=ok,
        error="" if ok else f"HTTP {response.status_code}",
        # Masked before cutting, so a secret straddling the cut cannot leak in part.
        body_excerpt=mask_secrets(response.text, secrets)[:_BODY_EXCERPT_CHARS],
    )


def _token(check: HealthSpec) -> tuple[dict[str, str], list[str]]:
    """(request headers, secret values to mask) from the block named in the plan."""
    if not check.token_block:
        return {}, []
    target = ServiceTarget.for_service(check.token_block)
    return target.health_check_headers(), target.secret_values()


def _require_http_url(service: str, url: str) -> None:
    # A malformed URL would otherwise look like an unhealthy service for the whole budget.
    try:
        scheme = httpx.URL(url).scheme
    except httpx.InvalidURL as exc:
        raise ConfigurationError(
            f"Service {service!r}: health check URL {url!r} is not a URL ({exc})."
        ) from exc
    if scheme not in ("http", "https"):
        raise ConfigurationError(
            f"Service {service!r}: health check URL {url!r} must start with http:// or https://."
        )


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    # The run's log inside a run; an ordinary logger when called outside one.
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.tasks.http")
