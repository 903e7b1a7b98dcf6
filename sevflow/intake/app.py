"""The alert intake: an HTTP service that turns alert deliveries into incidents.

    POST /alerts/{source}   alertmanager, grafana, pagerduty, datadog, opsgenie, sns, generic
    GET  /healthz           liveness, Prefect reachability, queue and counters
    GET  /docs, /openapi.json

A delivery is checked in this order, and each step answers for itself:
size (413) → sender's credentials from its block (401; 503 while they cannot be loaded) →
JSON (400) → the sender's shape (422) → routing rules → stored durably → 202.
`202` means the alerts are on disk; reaching Prefect happens behind it (`deliver.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sevflow.errors import AuthenticationFailed, IntakeError, PayloadError
from sevflow.intake import alerts as alert_formats
from sevflow.intake.alerts import SOURCES, Control, GenericAlert
from sevflow.intake.auth import SnsVerifier, SourceAuth, check_aws_url, check_headers_and_body
from sevflow.intake.deliver import Deliverer
from sevflow.intake.rules import RuleSet
from sevflow.intake.store import Store

log = logging.getLogger("sevflow.intake")

MAX_BODY = 1024 * 1024
MAX_WAITING_ANSWERS = 4  # new incidents whose answers wait for their run at one time


@dataclass
class IntakeConfig:
    rules: RuleSet
    state_dir: Path
    answer_wait: float = 3.0  # seconds a new incident's answer waits for its run id (PagerDuty waits 5)
    credentials_refresh: float = 30.0
    delivery_lanes: int = 8


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
        self.loaded = False
        self.error = ""

    async def refresh(self) -> None:
        from sevflow.blocks import AlertSource

        found: dict[str, SourceAuth | None] = {}
        for source in SOURCES:
            try:
                block = await AlertSource.aload(source)
            except ValueError:  # no block of that name: the source is not configured
                found[source] = None
                continue
            found[source] = block.get_auth(source, f"sevflow-alert-source/{source}")
        self.by_source = found
        self.loaded = True
        self.error = ""

    async def keep_fresh(self, interval: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # Prefect down: keep the last good credentials
                if self.error != str(exc):
                    log.warning("Cannot load alert source blocks (%s: %s); %s", type(exc).__name__, exc,
                                "keeping the loaded ones" if self.loaded else "answering 503 until they load")
                self.error = str(exc)
                await asyncio.sleep(min(interval, 2.0) if not self.loaded else interval)
                continue
            await asyncio.sleep(interval)


def create_app(config: IntakeConfig) -> FastAPI:
    state: dict[str, Any] = {}
    credentials = Credentials()
    run_known: dict[str, asyncio.Event] = {}
    verifier = SnsVerifier(fetch=_https_get, cache_dir=config.state_dir / "sns-certs")

    def on_run(incident_id: str, flow_run_id: str) -> None:
        event = run_known.pop(incident_id, None)
        if event is not None:
            event.set()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(config.state_dir / "alerts.db")
        deliverer = Deliverer(store, lanes=config.delivery_lanes, on_run=on_run)
        new_incidents: asyncio.Queue[str] = asyncio.Queue()
        state.update(store=store, deliverer=deliverer, new_incidents=new_incidents)
        tasks = [asyncio.create_task(credentials.keep_fresh(config.credentials_refresh)),
                 asyncio.create_task(deliverer.run())]
        tasks += [asyncio.create_task(deliverer.open_new(new_incidents)) for _ in range(4)]
        deliverer.wake.set()  # anything queued before a restart goes first
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.aclose()

    app = FastAPI(
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

    @app.exception_handler(IntakeError)
    async def _refused(request: Request, exc: IntakeError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        store: Store = state["store"]
        deliverer: Deliverer = state["deliverer"]
        counts = await asyncio.to_thread(store.counts)
        return {
            "status": "ok",
            "credentials_loaded": credentials.loaded,
            "prefect_reachable": deliverer.reachable,
            "last_delivery_error": deliverer.last_error if deliverer.reachable is False else "",
            "rules": len(config.rules.rules),
            **counts,
        }

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
    async def receive(request: Request) -> JSONResponse:
        """Receive one delivery from an alerting system."""
        source = request.path_params["source"]
        if source not in SOURCES:
            raise PayloadError(f"unknown source {source!r}; POST to /alerts/<one of: {', '.join(SOURCES)}>", 404)
        body = await _read_limited(request)
        if not credentials.loaded:
            return JSONResponse({"error": "the intake has not loaded its credentials from Prefect yet; retry"},
                                status_code=503, headers={"Retry-After": "5"})
        auth = credentials.by_source.get(source)
        if auth is None:
            raise AuthenticationFailed(f"source {source!r} is not configured: create a 'sevflow Alert Source' "
                                       f"block named {source!r}")
        headers = request.headers  # case-insensitive already
        doc: Any = None
        if source == "sns":
            # The signature is inside the SNS envelope: read the envelope, check it, then the message.
            if auth.bearer_token:
                check_headers_and_body(auth, headers, body)
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
        routed = [(a, config.rules.route(a)) for a in parsed]
        store: Store = state["store"]
        try:
            decisions = await store.accept(routed, body)
        except Exception as exc:  # disk full or unwritable: not stored, so not accepted; the sender retries
            log.error("Could not store a %s delivery: %s", source, exc)
            return JSONResponse({"error": f"could not store the alert ({type(exc).__name__}); retry"},
                                status_code=503, headers={"Retry-After": "5"})
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
        return JSONResponse(status_code=202, content={
            "accepted": len(decisions),
            "alerts": [_answer(store, d) for d in decisions],
        })

    async def _control(control: Control, auth: SourceAuth) -> JSONResponse:
        if control.kind == "sns-subscribe":
            check_aws_url(auth, control.subscribe_url, "SubscribeURL")
            try:
                await asyncio.to_thread(_https_get, control.subscribe_url)
            except httpx.HTTPError as exc:
                return JSONResponse({"error": f"could not confirm the subscription: {type(exc).__name__}; "
                                     "SNS will send the confirmation again"}, status_code=503)
            log.warning("Confirmed the SNS subscription to %s", control.topic_arn)
            return JSONResponse({"status": "subscription confirmed", "topic": control.topic_arn}, status_code=200)
        return JSONResponse({"status": control.kind, "message": control.message}, status_code=200)

    return app


def _answer(store: Store, d: Any) -> dict[str, Any]:
    from sevflow.tasks.orchestrator import run_url

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
        "flow_run_url": run_url(flow_run_id) if flow_run_id else None,
        "delivery": "queued" if d.incident_id and not flow_run_id else None,
    }


async def _read_limited(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise PayloadError(f"body is {int(declared)} bytes; the limit is {MAX_BODY} (1 MiB)", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadError(f"body is over the limit of {MAX_BODY} bytes (1 MiB)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


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
          credentials_refresh: float = 30.0) -> None:
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
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)
