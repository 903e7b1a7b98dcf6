"""The alert intake: an HTTP service that turns alert deliveries into incidents.

    POST /alerts/{source}   alertmanager, grafana, pagerduty, datadog, opsgenie, sns, generic
    GET  /approve/{run}/{link}/{token}, POST: the approval page (sevflow.intake.approval_page)
    GET  /healthz           store health (503 when it cannot accept), Prefect reachability,
                            queue, counters and dead letters
    GET  /docs, /openapi.json

A delivery is checked in this order, and each step answers for itself:
size (413) → sender's credentials from its block (401; 503 while they cannot be loaded) →
JSON, at most 32 levels deep (400) → the sender's shape (422), at most 500 alerts (413) →
the source's rate limit (429) → routing rules → stored durably → 202 (503 when the store
cannot write: every request is answered). `202` means the alerts are on disk; reaching
Prefect happens behind it (`deliver.py`). No input gets a 5xx other than a 503 with
Retry-After for something temporarily missing (credentials, a certificate, the disk).

`POST /alerts/{source}` is answered as plain ASGI, in front of FastAPI's middleware and routing
(`IntakeApp`): in an alert storm those cost more CPU per delivery than every check above
together. The route is still declared in FastAPI, for /docs and /openapi.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from sevflow.errors import AuthenticationFailed, IntakeError, PayloadError, TemporarilyUnavailable
from sevflow.intake import alerts as alert_formats
from sevflow.intake.alerts import SOURCES, Control, GenericAlert
from sevflow.intake.auth import SnsVerifier, SourceAuth, check_authorization, check_aws_url, check_headers_and_body
from sevflow.intake.deliver import Deliverer
from sevflow.intake.rules import RuleSet
from sevflow.intake.store import Store

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

log = logging.getLogger("sevflow.intake")

MAX_BODY = 1024 * 1024
MAX_WAITING_ANSWERS = 4  # new incidents whose answers wait for their run at one time


@dataclass
class IntakeConfig:
    rules: RuleSet
    state_dir: Path
    answer_wait: float = 3.0  # seconds a new incident's answer waits for its run id (PagerDuty waits 5)
    credentials_refresh: float = 2.0  # block changes apply within this (and one load's time)
    delivery_lanes: int = 8
    store_retry: float = 2.0  # seconds between attempts to reopen a store that cannot accept


def _https_get(url: str) -> bytes:
    """GET an AWS URL already checked by `check_aws_url` (TLS verified, no redirects)."""
    response = httpx.get(url, timeout=httpx.Timeout(5.0), follow_redirects=False)
    response.raise_for_status()
    return response.content


class Credentials:
    """Each source's checks, loaded from its `sevflow Alert Source` block and refreshed, so a
    rotated secret takes effect without a restart. Kept in memory while Prefect is down."""

    def __init__(self) -> None:
        self.by_source: dict[str, SourceAuth | None] = {}
        self.invalid: dict[str, str] = {}
        self._versions: dict[str, tuple[Any, Any]] = {}
        self.loaded = False
        self.error = ""

    async def refresh(self, client: PrefectClient) -> None:
        """One request for every alert source block; only a block that changed is read again
        (this runs every 2 s, on the loop that answers senders)."""
        from pydantic import ValidationError

        from sevflow.blocks import AlertSource

        documents = await client.read_block_documents_by_type(AlertSource.get_block_type_slug(), include_secrets=True)
        found: dict[str, SourceAuth | None] = dict.fromkeys(SOURCES)
        versions: dict[str, tuple[Any, Any]] = {}
        for doc in documents:
            if doc.name not in found:
                continue
            version = (doc.id, doc.updated)
            versions[doc.name] = version
            if self._versions.get(doc.name) == version and doc.name not in self.invalid:
                found[doc.name] = self.by_source.get(doc.name)
                continue
            try:
                block = AlertSource.model_validate(doc.data)
            except ValidationError as exc:  # saved by hand or by an older sevflow: refuse that source only
                if self.invalid.get(doc.name) != str(exc):
                    log.error("Alert source block %r is invalid; its deliveries are refused (401): %s", doc.name,
                              " ".join(str(exc).split("\n")[1:3]))
                self.invalid[doc.name] = str(exc)
                continue
            self.invalid.pop(doc.name, None)
            found[doc.name] = block.get_auth(doc.name, f"sevflow-alert-source/{doc.name}")
        self.by_source, self._versions = found, versions
        self.loaded = True
        self.error = ""

    async def keep_fresh(self, client: PrefectClient, interval: float) -> None:
        while True:
            try:
                await self.refresh(client)
            except Exception as exc:  # Prefect down: keep the last good credentials
                if self.error != str(exc):
                    log.warning("Cannot load alert source blocks (%s: %s); %s", type(exc).__name__, exc,
                                "keeping the loaded ones" if self.loaded else "answering 503 until they load")
                self.error = str(exc)
                await asyncio.sleep(min(interval, 2.0) if not self.loaded else interval)
                continue
            await asyncio.sleep(interval)


@dataclass
class RateLimit:
    """A token bucket per source, counted in alerts: `rate` per second on average, bursts of
    `burst_seconds` worth absorbed."""

    burst_seconds: float = 20.0
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # source -> (tokens, at)

    def take(self, source: str, alerts: int, rate: float) -> float:
        """0 when allowed (and counted); else the seconds until it would be."""
        now = time.monotonic()
        capacity = max(rate * self.burst_seconds, 1.0)
        tokens, at = self._buckets.get(source, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if alerts <= tokens:
            self._buckets[source] = (tokens - alerts, now)
            return 0.0
        self._buckets[source] = (tokens, now)
        return (min(alerts, capacity) - tokens) / rate


ALERTS_PREFIX = "/alerts/"


class IntakeApp(FastAPI):
    """FastAPI, with `POST /alerts/<source>` answered before FastAPI's own stack (see
    `alert_post` in `create_app`); every other request, the docs included, goes through it."""

    alert_post: Callable[[Scope, Receive, Send], Awaitable[None]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(ALERTS_PREFIX)
                and "/" not in scope["path"][len(ALERTS_PREFIX):] and not scope.get("root_path")):
            await self.alert_post(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _refusal(exc: IntakeError) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TemporarilyUnavailable) else None
    return exc.status, {"error": str(exc)}, headers


def _json(content: Any) -> bytes:
    """As Starlette's JSONResponse renders it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def create_app(config: IntakeConfig) -> IntakeApp:
    state: dict[str, Any] = {}
    credentials = Credentials()
    run_known: dict[str, asyncio.Event] = {}
    verifier = SnsVerifier(fetch=_https_get, cache_dir=config.state_dir / "sns-certs")
    limits = RateLimit()

    def on_run(incident_id: str, flow_run_id: str) -> None:
        event = run_known.pop(incident_id, None)
        if event is not None:
            event.set()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from prefect.client.orchestration import get_client

        store = Store(config.state_dir / "alerts.db")
        client = get_client()
        await client.__aenter__()
        client._client.event_hooks["response"].append(_answer_at_once)
        deliverer = Deliverer(store, client, lanes=config.delivery_lanes, on_run=on_run)
        new_incidents: asyncio.Queue[str] = asyncio.Queue()
        state.update(store=store, deliverer=deliverer, new_incidents=new_incidents)
        tasks = [asyncio.create_task(credentials.keep_fresh(client, config.credentials_refresh)),
                 asyncio.create_task(deliverer.run()),
                 asyncio.create_task(_keep_store_open(store, config.store_retry))]
        tasks += [asyncio.create_task(deliverer.open_new(new_incidents)) for _ in range(4)]
        deliverer.wake.set()  # anything queued before a restart goes first
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.aclose()
            await client.__aexit__(None, None, None)

    app = IntakeApp(
        title="sevflow alert intake",
        version="1",
        description=(
            "Alerting systems POST here; a firing alert starts the procedure its routing rule names, once per "
            "incident. Authenticate with `Authorization: Bearer <token>` (the `sevflow Alert Source` block "
            "named after the source) and, where the sender signs, its signature header. The `generic` source "
            "takes one alert object, a list of them, or `{\"alerts\": [...]}` in the shape below."
        ),
        lifespan=lifespan,
        redirect_slashes=False,  # a wrong path is a 404 the sender's operator can read, not a redirect
    )

    from sevflow.intake.approval_page import add_routes

    add_routes(app)

    @app.exception_handler(IntakeError)
    async def _refused(request: Request, exc: IntakeError) -> JSONResponse:
        status, content, headers = _refusal(exc)
        return JSONResponse(content, status_code=status, headers=headers)

    @app.get("/healthz", responses={503: {"description": "the store cannot accept alerts (every delivery gets 503)"}})
    async def healthz() -> JSONResponse:
        """Store health (503 when it cannot accept), Prefect reachability, queue, counters, dead letters."""
        store: Store = state["store"]
        deliverer: Deliverer = state["deliverer"]
        problem = await store.probe()
        counts: dict[str, Any] = {}
        dead: list[dict[str, Any]] = []
        if store.available:
            try:
                counts = await asyncio.to_thread(store.counts)
                dead = await asyncio.to_thread(store.dead_letters, 20) if counts.get("dead_letters") else []
            except Exception as exc:  # the counts are extras; the store's own health is `problem`
                counts = {"counts_error": f"{type(exc).__name__}: {exc}"}
        body = {
            "status": "ok" if not problem else "store unavailable",
            "store": {"path": str(store.path), "accepting": not problem, "error": problem,
                      "set_aside": store.set_aside},
            "credentials_loaded": credentials.loaded,
            "prefect_reachable": deliverer.reachable,
            "last_delivery_error": deliverer.last_error if deliverer.reachable is False else "",
            "rules": len(config.rules.rules),
            **counts,
            "recent_dead_letters": dead,
        }
        return JSONResponse(body, status_code=503 if problem else 200,
                            headers={"Retry-After": "5"} if problem else None)

    @app.post(
        "/alerts/{source}",
        status_code=202,
        responses={202: {"description": "stored; the incident and its flow run"}, 400: {}, 401: {}, 404: {},
                   413: {}, 422: {}, 503: {"description": "credentials not loaded yet, or the disk refused"}},
        openapi_extra={
            # `source` is read from the path by hand: FastAPI's parameter machinery was a fifth of
            # the CPU of an answer in the storm bench. It is documented here instead.
            "parameters": [{"name": "source", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": list(SOURCES)}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"description": "The sender's own webhook payload; for `generic`:",
                           **GenericAlert.model_json_schema()}}}}},
    )
    async def receive(request: Request) -> Response:
        """Receive one delivery from an alerting system."""
        # Served by `IntakeApp.__call__` below FastAPI's stack; this route documents it (and
        # answers the same way if the app is ever mounted inside another).
        body = await _read_limited(request)
        status, content, extra = await accept_delivery(request.path_params["source"], request.headers, body)
        return Response(_json(content), status_code=status, headers=extra, media_type="application/json")

    async def accept_delivery(source: str, headers: Headers, body: bytes) -> tuple[int, dict[str, Any],
                                                                                 dict[str, str] | None]:
        """Check, parse, route and store one delivery: (status, answer, extra headers).
        An `IntakeError` is the sender's answer (4xx, or 503 with Retry-After)."""
        if source not in SOURCES:
            raise PayloadError(f"unknown source {source!r}; POST to /alerts/<one of: {', '.join(SOURCES)}>", 404)
        if not credentials.loaded:
            raise TemporarilyUnavailable("the intake has not loaded its credentials from Prefect yet; retry")
        auth = credentials.by_source.get(source)
        if auth is None:
            raise AuthenticationFailed(f"source {source!r} is not configured: create a 'sevflow Alert Source' "
                                       f"block named {source!r}")
        doc: Any = None
        if source == "sns":
            # The signature is inside the SNS envelope: read the envelope, check it, then the message.
            if auth.bearer_token or auth.basic_password:  # SNS sends basic auth from the endpoint URL
                check_authorization(auth, headers)
            doc = alert_formats.decode(body)
            envelope = alert_formats.sns_envelope(doc)
            if not auth.allow_unauthenticated:
                await asyncio.to_thread(verifier.verify, auth, envelope)
        else:
            check_headers_and_body(auth, headers, body)
            doc = alert_formats.decode(body)
        parsed = alert_formats.parse(source, doc)
        if isinstance(parsed, Control):
            return await _control(parsed, auth)
        wait = limits.take(source, len(parsed), auth.rate_limit)
        if wait:
            return 429, {"error": f"source {source!r} is over its rate limit of {auth.rate_limit:g} alerts/s "
                                  f"(block {auth.block}); retry in {math.ceil(wait)} s"}, \
                {"Retry-After": str(math.ceil(wait))}
        routed = []
        for i, a in enumerate(parsed):
            try:
                routed.append((a, config.rules.route(a), a.model_dump_json()))
            except (ValueError, TypeError, RecursionError) as exc:  # stored as written, or not at all
                raise PayloadError(f"alert {i} cannot be stored as JSON: {type(exc).__name__}") from exc
        store: Store = state["store"]
        decisions = await store.accept(routed, body, source)  # TemporarilyUnavailable: 503, the sender retries
        deliverer: Deliverer = state["deliverer"]
        deliverer.wake.set()
        for d in decisions:
            if d.outcome == "started":
                state["new_incidents"].put_nowait(d.incident_id)
        for d in decisions:
            if d.outcome == "unmatched":
                log.info("Unmatched %s alert %s (%s): no routing rule; stored, nothing started", source,
                         d.alert.identity, d.alert.summary)
        # A new incident's answer waits (briefly) for its run, so the sender's log links to it.
        # Repeats and joiners answer at once: in a storm they are most of the traffic. And when
        # many new incidents are already waiting for their runs (a storm of new incidents), the
        # answer does not wait either: the incident id is known, the run follows from the queue.
        waits: dict[str, asyncio.Event] = {}
        for d in decisions:
            if d.outcome == "started" and config.answer_wait > 0 and len(run_known) < MAX_WAITING_ANSWERS:
                waits[d.incident_id] = run_known.setdefault(d.incident_id, asyncio.Event())
                inc = store.incidents.get(d.incident_id)
                if inc is not None and inc.flow_run_id:
                    waits[d.incident_id].set()
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in waits.values())), timeout=config.answer_wait)
            except TimeoutError:
                pass
            finally:
                for incident_id in waits:
                    run_known.pop(incident_id, None)
        return 202, {"accepted": len(decisions), "alerts": [_answer(store, d) for d in decisions]}, None

    async def alert_post(scope: Scope, receive: Receive, send: Send) -> None:
        """POST /alerts/{source} as plain ASGI: FastAPI's middleware, routing and dependency
        machinery cost more CPU per delivery than the intake's own checks (storm bench)."""
        headers = Headers(scope=scope)
        try:
            body = await _read_body(headers, receive)
            if body is None:
                return  # the sender hung up; nothing was stored
            status, content, extra = await accept_delivery(scope["path"][len(ALERTS_PREFIX):], headers, body)
        except IntakeError as exc:
            status, content, extra = _refusal(exc)
        except Exception:  # a bug: logged with its traceback; the sender gets a plain 500 and retries
            log.exception("Delivery to %s failed inside the intake", scope["path"])
            status, content, extra = 500, {"error": "the intake failed on this delivery (logged); retry"}, None
        payload = _json(content)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    app.alert_post = alert_post  # type: ignore[attr-defined]

    async def _keep_store_open(store: Store, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not store.available:
                store.reopen()  # on the loop's thread, as every use of its connection

    async def _control(control: Control, auth: SourceAuth) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        if control.kind == "sns-subscribe":
            check_aws_url(auth, control.subscribe_url, "SubscribeURL")
            try:
                await asyncio.to_thread(_https_get, control.subscribe_url)
            except httpx.HTTPError as exc:
                return 503, {"error": f"could not confirm the subscription: {type(exc).__name__}; "
                                      "SNS will send the confirmation again"}, {"Retry-After": "30"}
            log.warning("Confirmed the SNS subscription to %s", control.topic_arn)
            return 200, {"status": "subscription confirmed", "topic": control.topic_arn}, None
        return 200, {"status": control.kind, "message": control.message}, None

    return app


async def _answer_at_once(response: httpx.Response) -> None:
    """Prefect's client sleeps 2 s (then 4, 8...) after a 503, 429, 502 or 408 before it returns
    it, even with PREFECT_CLIENT_MAX_RETRIES=0 (it sleeps after its last attempt too). The intake
    retries those itself, at once and with its own backoff: this raises them as Prefect's client
    raises any other error status, before that sleep. Measured in bench/intake_storm.py: an
    embedded (SQLite) server's momentary 503 on a run's creation held alert -> Running for 2.0 s
    more (p90 3.0 s against a median of 0.8 s)."""
    if response.status_code in (408, 429, 502, 503):
        from prefect.exceptions import PrefectHTTPStatusError

        await response.aread()
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise PrefectHTTPStatusError.from_httpx_error(exc) from None


@functools.lru_cache(maxsize=1024)
def _run_url(flow_run_id: str) -> str | None:
    from sevflow.tasks.orchestrator import run_url

    return run_url(flow_run_id)  # reads Prefect's settings: a quarter of a millisecond, per answer


def _answer(store: Store, d: Any) -> dict[str, Any]:
    inc = store.incidents.get(d.incident_id) if d.incident_id else None
    flow_run_id = (inc.flow_run_id if inc else None) or d.flow_run_id
    if d.incident_id and flow_run_id is None:
        known = store.incident(d.incident_id)
        flow_run_id = known.flow_run_id if known else None
    return {
        "identity": d.alert.identity,
        "status": d.alert.status,
        "outcome": d.outcome,
        "duplicate": d.duplicate,
        "incident_id": d.incident_id,
        "rule": d.rule,
        "flow_run_id": flow_run_id,
        "flow_run_url": _run_url(flow_run_id) if flow_run_id else None,
        "delivery": "queued" if d.incident_id and not flow_run_id else None,
    }


async def _read_body(headers: Headers, receive: Receive) -> bytes | None:
    """The request body from ASGI messages, refused (413) past MAX_BODY; None when the sender
    disconnected before sending all of it."""
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise PayloadError(f"body is {int(declared)} bytes; the limit is {MAX_BODY} (1 MiB)", 413)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadError(f"body is over the limit of {MAX_BODY} bytes (1 MiB)", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_limited(request: Request) -> bytes:
    from starlette.requests import ClientDisconnect

    body = await _read_body(request.headers, request.receive)
    if body is None:
        raise ClientDisconnect()
    return body


def require_prefect(wait: float = 5.0) -> str:
    """The Prefect API the intake will use. ConfigurationError, saying how to point the intake
    at one, when PREFECT_API_URL is unset or does not answer within `wait` seconds."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from sevflow.errors import ConfigurationError

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigurationError(
            "sevflow intake needs the Prefect server its procedures run on, and PREFECT_API_URL is not set. "
            "Set it (e.g. `export PREFECT_API_URL=http://127.0.0.1:4200/api`, the address `sevflow up` prints, "
            "or `prefect config set PREFECT_API_URL=...`), or run `sevflow up`, which starts a server, the "
            "procedures and the intake together.")
    deadline = time.monotonic() + wait
    while True:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
        if problem is None:
            return url
        if time.monotonic() > deadline:
            raise ConfigurationError(
                f"sevflow intake: the Prefect server at PREFECT_API_URL={url} does not answer "
                f"({type(problem).__name__}: {str(problem)[:200]}). Start it (`prefect server start`, or "
                "`sevflow up`), or point PREFECT_API_URL at the server your procedures run on.")
        time.sleep(0.5)


def load_config(rules_path: Path, state_dir: Path, **kwargs: Any) -> IntakeConfig:
    """Read and check the rules file against the served procedures (stops with RulesError)."""
    import inspect

    from sevflow.deployments import procedures
    from sevflow.intake.rules import EXAMPLE, load_rules

    if not rules_path.exists():
        rules_path.parent.mkdir(parents=True, exist_ok=True)
        rules_path.write_text(EXAMPLE)
        log.warning("No routing rules at %s: wrote an example there. Until it has rules, every alert is "
                    "stored and counted as unmatched, and starts nothing.", rules_path)
    signatures = {name: list(inspect.signature(f.fn).parameters) for name, f in procedures().items()}
    rules = load_rules(rules_path.read_text(), str(rules_path), signatures)
    return IntakeConfig(rules=rules, state_dir=state_dir, **kwargs)


def serve(host: str, port: int, rules_path: Path, state_dir: Path, answer_wait: float = 3.0,
          credentials_refresh: float = 2.0) -> None:
    import uvicorn

    config = load_config(rules_path, state_dir, answer_wait=answer_wait, credentials_refresh=credentials_refresh)
    # Prefect's logging set-up owns the root logger (WARNING); the intake's own lines go to stderr.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    log.info("sevflow intake on http://%s:%d (rules: %s, %d rules; state: %s)", host, port, rules_path,
             len(config.rules.rules), state_dir)
    app = create_app(config)
    _freeze_startup_objects()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _freeze_startup_objects() -> None:
    """Leave what start-up built out of every later garbage collection (`gc.freeze`).

    After importing Prefect and the procedures the intake holds ~190,000 objects, and a full
    collection walks them all: 141 ms measured, during which no answer is sent. In the storm
    bench every connection in flight waited ~150 ms about once a second (the p99). Start-up's own
    garbage is collected first; objects made afterwards are collected as usual. Only the
    `sevflow intake` process does this (never a process that imports the app, such as the tests).
    """
    import gc

    import sevflow.tasks.orchestrator  # noqa: F401 - answers import it on first use: freeze it too

    gc.collect()
    gc.freeze()
