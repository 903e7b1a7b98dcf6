"""The intake over real HTTP: fixture bytes in, stored alerts, runs and records out."""

from __future__ import annotations

import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.conftest import Service, api, wait_final, wait_paused
from tests.intake.conftest import SNS_TOPIC, TOKENS, StoreView, post, save_sources
from tests.support.alerts import SnsSigner, fixture, sns_alarm, vectors
from tests.support.services import AwsStandIn
from tests.support.stack import Intake, PrefectServer
from tests.support.wait import until

FIXTURES = {
    "alertmanager": ("alertmanager-firing.json", ["alertmanager:1a30ba71cca2921f"]),
    "grafana": ("grafana-firing-grouped.json", ["grafana:c6eadffa33fcdf37", "grafana:bc97ff14869b13e3"]),
    "pagerduty": ("pagerduty-v3-incident-triggered.json", ["pagerduty:Q2CKYRLH85UNN4"]),
    "datadog": ("datadog-triggered.json", ["datadog:5485379890863845239"]),
    "opsgenie": ("opsgenie-create.json", ["opsgenie:alert-alias"]),
}
PD_SIGNATURE = vectors("pagerduty-v3-signature-vectors.json")["vectors"][0]["X-PagerDuty-Signature"]
GRAFANA = vectors("grafana-hmac-vectors.GENERATED.json")


def signed_headers(source: str) -> dict[str, str]:
    if source == "pagerduty":
        return {"X-PagerDuty-Signature": PD_SIGNATURE}
    if source == "grafana":
        return dict(GRAFANA["without_timestamp"])
    return {}


def runs_tagged(tag: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))


def events_for(stack: PrefectServer, resource: str) -> list[dict[str, Any]]:
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    with api(stack) as client:
        r = client.post("/events/filter", json={"filter": {"resource": {"id": [resource]},
                                                           "occurred": {"since": since}}, "limit": 50})
        r.raise_for_status()
        return r.json()["events"]


@pytest.mark.parametrize("source", sorted(FIXTURES))
def test_each_fixture_is_accepted_and_stored_exactly(intake: Intake, stored: StoreView, source: str) -> None:
    name, identities = FIXTURES[source]
    body = fixture(name)
    r = post(intake, source, body, headers=signed_headers(source))
    assert r.status_code == 202, r.text
    answer = r.json()
    assert [a["identity"] for a in answer["alerts"]] == identities
    # no rule routes these (they name no shop-* service): stored, counted, nothing started
    assert {a["outcome"] for a in answer["alerts"]} == {"unmatched"}
    assert all(a["incident_id"] is None and a["flow_run_id"] is None for a in answer["alerts"])
    rows = stored.rows("identity IN (%s)" % ",".join("?" * len(identities)), tuple(identities))
    rows = rows[-len(identities):]
    assert [row["identity"] for row in rows] == identities
    assert all(bytes(row["raw"]) == body for row in rows)  # the exact bytes, kept
    # ... once per delivery, however many alerts it holds
    assert len({row["delivery_id"] for row in rows}) == 1 and stored.deliveries(rows[0]["delivery_id"]) == 1
    assert all(row["delivered_at"] is not None and row["incident_id"] is None for row in rows)
    alert = json.loads(rows[0]["alert"])
    assert alert["source"] == source and alert["status"] == "firing" and alert["summary"]


def test_failed_authentication_stores_nothing_and_says_why(intake: Intake, stored: StoreView) -> None:
    before, health = stored.count(), intake.health()
    body = fixture("alertmanager-firing.json")
    cases = [
        ("alertmanager", body, None, {}, "missing `Authorization: Bearer"),
        ("alertmanager", body, "wrong-token", {}, "not the one in block sevflow-alert-source/alertmanager"),
        ("alertmanager", body, TOKENS["grafana"], {}, "not the one"),  # another sender's token
        ("pagerduty", fixture("pagerduty-v3-incident-triggered.json"), "default", {}, "missing X-PagerDuty-Signature"),
        ("grafana", fixture("grafana-firing-grouped.json"), "default",
         {"X-Grafana-Alerting-Signature": "0" * 64}, "does not match"),
    ]
    for source, content, token, headers, words in cases:
        r = post(intake, source, content, token=token, headers=headers)
        assert r.status_code == 401, (source, r.text)
        assert words in r.json()["error"], r.text
        for secret in TOKENS.values():
            assert secret not in r.text
    assert stored.count() == before
    assert intake.health()["accepted"] == health["accepted"]


def test_signature_vectors_over_http(intake: Intake, stored: StoreView) -> None:
    pd = fixture("pagerduty-v3-incident-triggered.json")
    flipped = pd.replace(b'"title":"Test"', b'"title":"Tesu"')
    assert post(intake, "pagerduty", pd, headers={"X-PagerDuty-Signature": PD_SIGNATURE}).status_code == 202
    assert post(intake, "pagerduty", flipped, headers={"X-PagerDuty-Signature": PD_SIGNATURE}).status_code == 401
    rotating = f"v1={'ab' * 32},{PD_SIGNATURE}"
    assert post(intake, "pagerduty", pd, headers={"X-PagerDuty-Signature": rotating}).status_code == 202
    gf = fixture(GRAFANA["body_file"])
    assert post(intake, "grafana", gf, headers=GRAFANA["without_timestamp"]).status_code == 202
    assert post(intake, "grafana", gf[:-2] + b" }", headers=GRAFANA["without_timestamp"]).status_code == 401


def test_grafana_timestamp_and_replay_window(intake: Intake, aws: AwsStandIn) -> None:
    gf = fixture(GRAFANA["body_file"])
    stamped = GRAFANA["with_timestamp"]
    age = time.time() - int(stamped["X-Grafana-Alerting-Timestamp"])
    try:
        # a window wide enough for the vector's 2023 timestamp: it verifies
        save_sources(aws.url, timestamp_header="X-Grafana-Alerting-Timestamp", replay_window_seconds=age + 3600)
        until(lambda: post(intake, "grafana", gf, headers=stamped).status_code == 202, timeout=20,
              what="the intake to load the new Grafana settings")
        assert post(intake, "grafana", gf, headers=GRAFANA["without_timestamp"]).status_code == 401
        # the default window: the same delivery is a replay
        save_sources(aws.url, timestamp_header="X-Grafana-Alerting-Timestamp", replay_window_seconds=300)
        until(lambda: post(intake, "grafana", gf, headers=stamped).status_code == 401, timeout=20,
              what="the replay window to apply")
        r = post(intake, "grafana", gf, headers=stamped)
        assert "outside the replay window" in r.json()["error"]
    finally:
        save_sources(aws.url)
        until(lambda: post(intake, "grafana", gf, headers=GRAFANA["without_timestamp"]).status_code == 202, timeout=20,
              what="the plain Grafana settings to apply again")


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(intake: Intake, stored: StoreView) -> None:
    before = stored.count()
    cases = [
        ("generic", b"{not json", 400, "not valid JSON"),
        ("generic", b"", 400, "empty body"),
        ("generic", {"summary": "no id"}, 422, "alerts[0]: id: Field required"),
        ("generic", {"id": "x", "summary": "s", "status": "burning"}, 422, "status"),
        ("alertmanager", {"alerts": []}, 422, "non-empty list `alerts`"),
        ("opsgenie", {"alert": {}}, 422, "`action`"),
        ("generic", b"[" + b"1," * 600_000 + b"1]", 413, "1 MiB"),
        ("nagios", {"id": "x", "summary": "s"}, 404, "unknown source 'nagios'"),
    ]
    for source, body, status, words in cases:
        token = TOKENS.get(source, TOKENS["generic"])
        r = post(intake, source, body, token=token)
        assert r.status_code == status, (source, body if isinstance(body, dict) else body[:40], r.text)
        assert words in r.json()["error"], r.text
    assert stored.count() == before


def test_the_alert_route_answers_every_way_a_sender_can_send(intake: Intake, stored: StoreView) -> None:
    """`POST /alerts/<source>` is answered below FastAPI's stack (sevflow.intake.app.IntakeApp):
    the edges FastAPI used to take care of still hold."""
    before = stored.count()
    headers = {"Authorization": f"Bearer {TOKENS['generic']}", "Content-Type": "application/json"}
    # A sender that hangs up halfway through its body: nothing is stored, nothing answered.
    cut = f"cut-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"id": cut, "summary": "cut off", "labels": {"service": "billing"}}).encode()
    with socket.create_connection(("127.0.0.1", intake.port)) as s:
        s.sendall(f"POST /alerts/generic HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {headers['Authorization']}"
                  f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:20])
    # A chunked body (no Content-Length), in pieces: stored byte for byte.
    whole = f"chunked-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"id": whole, "summary": "sent in pieces", "labels": {"service": "billing"}}).encode()
    r = httpx.post(f"{intake.url}/alerts/generic", content=iter([body[:7], body[7:30], body[30:]]), headers=headers,
                   timeout=15)
    assert r.status_code == 202 and "content-length" not in r.request.headers, r.text
    assert r.json()["alerts"][0]["identity"] == f"generic:{whole}" and r.headers["content-type"] == "application/json"
    rows = stored.rows("identity=?", (f"generic:{whole}",))
    assert len(rows) == 1 and bytes(rows[0]["raw"]) == body
    # Other methods and paths are FastAPI's, as before: 405 and 404, nothing stored.
    assert httpx.get(f"{intake.url}/alerts/generic", headers=headers).status_code == 405
    for path in ("/alerts/generic/", "/alerts/", "/alerts/generic/extra"):
        r = httpx.post(f"{intake.url}{path}", content=body, headers=headers)
        assert r.status_code == 404, (path, r.status_code, r.text)
    # A refusal still carries its headers: Retry-After on a 503 is tested with the store faults;
    # here, an unknown source's 404 says what to do.
    r = httpx.post(f"{intake.url}/alerts/nagios", content=body, headers=headers)
    assert r.status_code == 404 and "POST to /alerts/<one of:" in r.json()["error"]
    assert stored.rows("identity=?", (f"generic:{cut}",)) == []
    assert stored.count() == before + 1
    assert intake.health()["status"] == "ok"


def test_unmatched_alert_is_answered_stored_counted_and_starts_nothing(intake: Intake, stored: StoreView) -> None:
    unmatched = intake.health().get("unmatched", 0)
    ident = f"disk-{uuid.uuid4().hex[:6]}"
    r = post(intake, "generic", {"id": ident, "summary": "disk 91% on db-2", "labels": {"service": "billing"}})
    assert r.status_code == 202 and r.json()["alerts"][0]["outcome"] == "unmatched"
    assert intake.health()["unmatched"] == unmatched + 1
    assert len(stored.rows("identity=?", (f"generic:{ident}",))) == 1
    assert "no routing rule" in intake.log_path.read_text()


def test_one_incident_per_alert_however_often_it_arrives(intake: Intake, stack: PrefectServer,
                                                         service: Service, stored: StoreView) -> None:
    from sevflow.blocks import ApprovalPolicy
    from sevflow.gate import answer_gate
    from sevflow.tasks.orchestrator import read_records

    ident = f"checkout-5xx-{uuid.uuid4().hex[:6]}"
    alert = {"id": ident, "summary": "checkout 5xx above 5%", "severity": "critical", "group": "errors",
             "labels": {"service": service.name}, "starts_at": "2026-11-26T09:00:00Z"}
    # a storm of re-deliveries of one alert, concurrently
    with ThreadPoolExecutor(10) as pool:
        answers = [r.json()["alerts"][0] for r in pool.map(lambda _: post(intake, "generic", alert), range(20))]
    assert {a["incident_id"] for a in answers} != {None} and len({a["incident_id"] for a in answers}) == 1
    incident = answers[0]["incident_id"]
    assert sorted(a["outcome"] for a in answers) == ["duplicate"] * 19 + ["started"]
    run_ids = {a["flow_run_id"] for a in answers if a["flow_run_id"]}
    assert len(run_ids) == 1
    run_id = run_ids.pop()
    first = next(a for a in answers if a["outcome"] == "started")
    assert first["flow_run_url"].endswith(f"/runs/flow-run/{run_id}")
    until(lambda: len(runs_tagged(f"incident:{incident}")) >= 1, what="the run to exist")
    assert [str(r.id) for r in runs_tagged(f"incident:{incident}")] == [run_id]
    # another alert of the same service and group joins the incident; then both resolve
    other = dict(alert, id=f"{ident}-latency", summary="checkout p99 latency 4s")
    joined = post(intake, "generic", other).json()["alerts"][0]
    assert (joined["outcome"], joined["incident_id"], joined["flow_run_id"]) == ("attached", incident, run_id)
    resolved = post(intake, "generic", dict(alert, status="resolved")).json()["alerts"][0]
    assert (resolved["outcome"], resolved["incident_id"]) == ("resolved", incident)
    wait_paused(run_id)
    assert len(runs_tagged(f"incident:{incident}")) == 1

    def alert_records() -> list[dict[str, Any]]:
        return list(read_records(run_id, "sevflow-record-alert-").values())
    until(lambda: len(alert_records()) == 3, what="three alert records on the run")
    descriptions = sorted(r["description"] for r in alert_records())
    assert descriptions == ["Alert firing (joined the incident): checkout p99 latency 4s",
                            "Alert firing (opened the incident): checkout 5xx above 5%",
                            "Alert resolved (resolved): checkout 5xx above 5%"]
    until(lambda: {e["event"] for e in events_for(stack, f"sevflow.incident.{incident}")} >=
          {"sevflow.alert.firing", "sevflow.alert.resolved", "sevflow.incident.opened"}, what="alert events")
    def firing() -> list[dict[str, Any]]:
        return [e for e in events_for(stack, f"sevflow.incident.{incident}") if e["event"] == "sevflow.alert.firing"]
    fired = until(lambda: (f := firing()) and sum(e["payload"]["repeats"] for e in f) >= 21 and f,
                  what="the firing events to be stored")
    # every accepted delivery, duplicates included, counted once: the first of each alert has an
    # event of its own, the repeats one pass carries share one that counts them
    assert sum(e["payload"]["repeats"] for e in fired) == 21 and len(fired) <= 21
    assert sorted(e["payload"]["identity"] for e in fired if not e["payload"]["repeat"]) == sorted(
        {e["payload"]["identity"] for e in fired})
    # the run's own parameters came from the rule and the alert
    with api(stack) as client:
        run = client.get(f"/flow_runs/{run_id}").json()
    assert run["parameters"]["service"] == service.name and run["parameters"]["severity"] == "SEV-2"
    assert run["parameters"]["incident_id"] == incident
    # end the incident (rejected: nothing changes); its timeline carries the alerts
    approver = ApprovalPolicy.load("default").rules[0].approvers[0]
    answer_gate(run_id, "reject", approver, "alert was a blip", wait_seconds=20)
    wait_final(run_id)
    with api(stack) as client:
        key = incident.replace("_", "-")
        artifact = client.post("/artifacts/latest/filter", json={"artifacts": {"key": {"any_": [f"{key}-timeline"]}}}).json()
    rows = json.loads(artifact[0]["data"]) if isinstance(artifact[0]["data"], str) else artifact[0]["data"]
    assert any("opened the incident" in json.dumps(row) for row in rows)
    # after the run ended the incident is closed: the next firing of that alert opens a new one
    until(lambda: stored.closed(incident), what="the intake to close the incident whose run ended")
    again = dict(alert, starts_at="2026-11-26T11:00:00Z")
    assert post(intake, "generic", again).json()["alerts"][0]["outcome"] == "started"
    newer = post(intake, "generic", again).json()["alerts"][0]
    assert newer["incident_id"] != incident and newer["outcome"] == "duplicate"


def test_sns_signed_messages_topics_and_subscription(intake: Intake, stored: StoreView, aws: AwsStandIn,
                                                     sns_signer: SnsSigner) -> None:
    cert = f"{aws.url}/SimpleNotificationService-test.pem"
    alarm = f"api-errors-{uuid.uuid4().hex[:6]}"
    ok = post(intake, "sns", sns_signer.sign(sns_alarm(SNS_TOPIC, alarm, cert_url=cert)), token=None)
    assert ok.status_code == 202, ok.text
    assert ok.json()["alerts"][0]["identity"] == f"sns:{SNS_TOPIC}:{alarm}"
    before = stored.count()
    refused = [
        sns_signer.sign(sns_alarm("arn:aws:sns:eu-west-1:999:other", alarm, cert_url=cert)),
        sns_signer.sign(sns_alarm(SNS_TOPIC, alarm, cert_url="https://evil.example/cert.pem")),
        dict(sns_signer.sign(sns_alarm(SNS_TOPIC, alarm, cert_url=cert)), Subject="changed"),
    ]
    for env in refused:
        assert post(intake, "sns", env, token=None).status_code == 401
    # the real fixture: signed by AWS, whose certificate this offline machine cannot fetch
    assert post(intake, "sns", fixture("aws-sns-cloudwatch-alarm.json"), token=None).status_code == 401
    assert stored.count() == before
    gets = len(aws.gets)
    wrong_topic = sns_signer.sign(sns_alarm("arn:aws:sns:eu-west-1:999:other", "x", cert_url=cert,
                                            subscribe_url=f"{aws.url}/?Action=ConfirmSubscription&Token=bad"))
    assert post(intake, "sns", wrong_topic, token=None).status_code == 401
    assert not any("Token=bad" in g for g in aws.gets[gets:])
    confirm = sns_signer.sign(sns_alarm(SNS_TOPIC, "x", cert_url=cert,
                                        subscribe_url=f"{aws.url}/?Action=ConfirmSubscription&Token=good"))
    r = post(intake, "sns", confirm, token=None)
    assert r.status_code == 200 and r.json()["status"] == "subscription confirmed"
    assert any("Token=good" in g for g in aws.gets)


def test_health_and_openapi(intake: Intake) -> None:
    health = intake.health()
    assert health["status"] == "ok" and health["credentials_loaded"] is True and health["rules"] == 1
    spec = httpx.get(f"{intake.url}/openapi.json").json()
    assert "/alerts/{source}" in spec["paths"] and "/healthz" in spec["paths"]
    body = spec["paths"]["/alerts/{source}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "summary" in body["properties"]


def test_sns_real_aws_message_verifies_over_http_against_the_stored_aws_certificate(intake: Intake,
                                                                                    stored: StoreView) -> None:
    """AWS's real certificate for that URL, stored in the tests, placed where the intake keeps
    the certificates it fetched: the real AWS-signed message is accepted offline."""
    import hashlib
    from pathlib import Path

    ours = Path(__file__).parent / "fixtures"
    body = (ours / "aws-sns-signed-2019-11.json").read_bytes()
    url = json.loads(body)["SigningCertURL"]
    cache = intake.state_dir / "sns-certs"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / (hashlib.sha256(url.encode()).hexdigest() + ".pem")).write_bytes(
        (ours / "sns-signing-cert-6aad65c2f9911b05cd53efda11f913f9.pem").read_bytes())
    r = post(intake, "sns", body, token=None)
    assert r.status_code == 202, r.text
    assert r.json()["alerts"][0]["identity"] == "sns:arn:aws:sns:us-east-1:041977924901:test:this is a test"
    tampered = body.replace(b"this is a test", b"this is a tesT")
    assert post(intake, "sns", tampered, token=None).status_code == 401


def test_sns_certificate_fetch_failure_is_503_with_retry_after(intake: Intake, stored: StoreView, aws: AwsStandIn,
                                                               sns_signer: SnsSigner) -> None:
    before = stored.count()
    env = sns_signer.sign(sns_alarm(SNS_TOPIC, "x", cert_url=f"{aws.url}/unavailable/SimpleNotificationService-1.pem"))
    r = post(intake, "sns", env, token=None)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
    assert "could not fetch the signing certificate" in r.json()["error"]
    assert stored.count() == before


def test_rate_limit_per_source_is_429_with_retry_after(intake: Intake, aws: AwsStandIn, stored: StoreView) -> None:
    from pydantic import SecretStr

    from sevflow.blocks import AlertSource

    AlertSource(bearer_token=SecretStr(TOKENS["opsgenie"]), rate_limit=0.05).save("opsgenie", overwrite=True)
    try:
        doc = json.loads(fixture("opsgenie-create.json"))
        # the bucket holds 20 s worth (one alert); wait for the new limit to apply, then exceed it
        until(lambda: post(intake, "opsgenie", doc).status_code == 429, what="the rate limit to apply")
        r = post(intake, "opsgenie", doc)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert "rate limit of 0.05 alerts/s" in r.json()["error"]
        # other sources are not limited by it
        assert post(intake, "generic", {"id": f"rl-{uuid.uuid4().hex[:6]}", "summary": "s"}).status_code == 202
    finally:
        save_sources(aws.url)


def test_alerts_per_delivery_are_capped_with_a_clear_413(intake: Intake, stored: StoreView) -> None:
    before = stored.count()
    alerts = [{"id": f"cap-{i}", "summary": "s"} for i in range(501)]
    r = post(intake, "generic", {"alerts": alerts})
    assert r.status_code == 413 and "limit is 500 alerts per delivery" in r.json()["error"]
    assert stored.count() == before


def test_a_rotated_token_applies_without_a_restart(intake: Intake, aws: AwsStandIn, stored: StoreView) -> None:
    """The Alert Source blocks are re-read every 2 s (`credentials_refresh`): a rotated bearer
    token is accepted and the old one refused, with no restart of the intake."""
    from pydantic import SecretStr

    from sevflow.blocks import AlertSource

    rotated = f"data-rotated-{uuid.uuid4().hex[:8]}"
    doc = json.loads(fixture("datadog-triggered.json"))
    assert post(intake, "datadog", doc).status_code == 202
    AlertSource(bearer_token=SecretStr(rotated)).save("datadog", overwrite=True)
    try:
        until(lambda: post(intake, "datadog", doc, token=rotated).status_code == 202, interval=0.2,
              what="the rotated token to apply")
        before = stored.count()
        refused = post(intake, "datadog", doc)
        assert refused.status_code == 401, refused.text
        assert stored.count() == before
    finally:
        save_sources(aws.url)
