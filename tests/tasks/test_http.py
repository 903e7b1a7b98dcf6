"""verify_health against real local HTTP services playing the production app's health check."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydantic
import pytest

import uuid

from sevflow import plans
from sevflow.blocks.service import ServiceTarget
from sevflow.models import HealthSpec
from sevflow.errors import ConfigurationError
from sevflow.tasks.http import (
    MAX_DELAY_SECONDS,
    next_poll_delay,
    request_timeout,
    verify_health,
)
from sevflow.tasks.host import MASK

TOKEN = "hc-token-7d1e"


@dataclass
class HealthService:
    """A tiny app whose /api/health answers 503 until its `healthy_after`-th request."""

    healthy_after: int | None = 1  # None: never healthy
    body: str = '{"status": "ok"}'
    echo_authorization: bool = False
    requests: int = 0
    authorizations: list[str | None] = field(default_factory=list)
    url: str = ""

    def answer(self, authorization: str | None) -> tuple[int, str]:
        self.requests += 1
        self.authorizations.append(authorization)
        healthy = self.healthy_after is not None and self.requests >= self.healthy_after
        body = f"auth={authorization}" if self.echo_authorization else self.body
        return (200, body) if healthy else (503, '{"status": "starting"}')


@pytest.fixture
def serve() -> Iterator[Callable[..., HealthService]]:
    servers: list[ThreadingHTTPServer] = []

    def start(**kwargs: object) -> HealthService:
        service = HealthService(**kwargs)  # type: ignore[arg-type]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = service.answer(self.headers.get("Authorization"))
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep the test output for the test

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        service.url = f"http://127.0.0.1:{server.server_address[1]}/api/health"
        return service

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def make_target(tmp_path: Path, urls: list[str], budget: float = 2.0, **fields: object) -> HealthSpec:
    """The health check as an approved plan holds it; a block with a token is saved first
    (the step reads the token from the server, as in a run)."""
    target = ServiceTarget(service="web", repository=str(tmp_path), health_check_urls=urls,
                           health_check_budget_seconds=budget, **fields)
    name = f"web-{uuid.uuid4().hex[:8]}"
    if target.health_check_token is not None:
        target.save(name)
    return plans.health(target.spec(name))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/health"


def test_a_healthy_service_passes_in_one_round(tmp_path: Path, serve) -> None:
    app = serve()

    report = verify_health.fn(make_target(tmp_path, [app.url]), phase="after deploy")

    assert report.ok and report.attempts == 1
    [check] = report.checks
    assert (check.url, check.status_code, check.ok, check.error) == (app.url, 200, True, "")
    assert check.body_excerpt == '{"status": "ok"}'
    assert app.requests == 1


def test_a_service_that_is_starting_up_passes_once_it_answers(tmp_path: Path, serve) -> None:
    app = serve(healthy_after=3)

    report = verify_health.fn(make_target(tmp_path, [app.url], budget=2.0), phase="after deploy")

    assert report.ok
    assert report.attempts == 3 and app.requests == 3


def test_a_service_that_never_answers_2xx_is_reported_not_raised(tmp_path: Path, serve) -> None:
    app = serve(healthy_after=None)

    report = verify_health.fn(make_target(tmp_path, [app.url], budget=0.5), phase="after deploy")

    assert not report.ok
    assert report.attempts >= 2 and app.requests == report.attempts
    [check] = report.checks
    assert (check.status_code, check.ok, check.error) == (503, False, "HTTP 503")


def test_every_url_must_be_healthy_in_the_same_round(tmp_path: Path, serve) -> None:
    app = serve()
    down = closed_port_url()

    report = verify_health.fn(make_target(tmp_path, [app.url, down], budget=0.3), phase="after deploy")

    assert not report.ok
    healthy, refused = report.checks
    assert healthy.ok and healthy.status_code == 200
    assert refused.url == down and refused.status_code is None and not refused.ok
    assert refused.error.startswith("ConnectError")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_token_reaches_the_service_and_is_masked_in_what_comes_back(tmp_path: Path, serve, stack) -> None:
    app = serve(echo_authorization=True)
    target = make_target(tmp_path, [app.url], health_check_token=TOKEN)
    logger = logging.getLogger("prefect.sevflow.tasks.http")  # outside a run the step logs here
    collected = _Collect()
    logger.addHandler(collected)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        report = verify_health.fn(target, phase="after deploy")
    finally:
        logger.removeHandler(collected)
        logger.setLevel(old_level)

    assert any("1/1 healthy" in line for line in collected.lines)
    assert TOKEN not in "\n".join(collected.lines)

    assert app.authorizations == [f"Bearer {TOKEN}"]
    assert report.checks[0].body_excerpt == f"auth=Bearer {MASK}"
    assert TOKEN not in report.model_dump_json()


def test_the_body_excerpt_is_short(tmp_path: Path, serve) -> None:
    app = serve(body="x" * 5000)

    report = verify_health.fn(make_target(tmp_path, [app.url]), phase="after deploy")

    assert report.checks[0].body_excerpt == "x" * 200


@pytest.mark.parametrize(
    ("urls", "match"),
    [([], "health_check_urls"), (["localhost:3000/api/health"], "http://"), (["ftp://host/health"], "http://")],
)
def test_missing_or_malformed_urls_are_configuration_errors(tmp_path: Path, urls: list[str], match: str) -> None:
    # The block refuses a URL without http(s) when it is made or read; the step refuses it too,
    # whatever made the plan it was handed.
    if urls:
        with pytest.raises(pydantic.ValidationError, match="health_check_urls"):
            make_target(tmp_path, urls)
    check = HealthSpec(service="web", urls=urls, budget_seconds=2.0)
    with pytest.raises(ConfigurationError, match=match):
        verify_health.fn(check, phase="after deploy")


# The decision, without a server.


def test_healthy_stops_polling() -> None:
    assert next_poll_delay(healthy=True, attempts=1, elapsed_seconds=0.0, budget_seconds=60) is None


def test_backoff_doubles_from_a_quarter_second_up_to_five() -> None:
    delays = [
        next_poll_delay(healthy=False, attempts=n, elapsed_seconds=0.0, budget_seconds=600)
        for n in range(1, 9)
    ]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert max(delays) == MAX_DELAY_SECONDS


def test_the_last_wait_ends_at_the_budget_and_a_spent_budget_stops() -> None:
    assert next_poll_delay(healthy=False, attempts=5, elapsed_seconds=9.0, budget_seconds=10) == 1.0
    assert next_poll_delay(healthy=False, attempts=5, elapsed_seconds=10.0, budget_seconds=10) is None
    assert next_poll_delay(healthy=False, attempts=1, elapsed_seconds=0.0, budget_seconds=0) is None


def test_request_timeout_is_finite_and_shrinks_with_the_budget() -> None:
    assert request_timeout(elapsed_seconds=0, budget_seconds=120) == 5.0
    assert request_timeout(elapsed_seconds=0, budget_seconds=2) == 2.0
    assert request_timeout(elapsed_seconds=5, budget_seconds=2) == 0.5
