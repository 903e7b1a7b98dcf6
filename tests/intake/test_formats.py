"""Every sender's payload reads into the one alert model. Pure: no server."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest

from sevflow.errors import PayloadError
from sevflow.intake.alerts import SOURCES, Alert, Control, decode, parse, when
from tests.support.alerts import fixture


def one(source: str, body: bytes | dict) -> Alert:
    out = parse(source, decode(body if isinstance(body, bytes) else json.dumps(body).encode()))
    assert isinstance(out, list) and len(out) == 1, out
    return out[0]


def test_alertmanager_fixture() -> None:
    a = one("alertmanager", fixture("alertmanager-firing.json"))
    assert a.identity == "alertmanager:1a30ba71cca2921f"
    assert a.group_key == 'alertmanager:{}/{severity="critical"}:{alertname="ProbeFailure"}'
    assert (a.status, a.opens, a.severity) == ("firing", True, "critical")
    assert a.summary == "BlackBox Probe Failure: https://server.example.org"
    assert a.labels["alertname"] == "ProbeFailure" and a.annotations["description"].startswith("Instance https")
    assert a.starts_at == datetime(2023, 2, 6, 13, 8, 45, 828000, tzinfo=timezone.utc) and a.ends_at is None
    # the literal backslash-u0026 of the fixture is kept as sent
    assert a.links[0].endswith("probe_success+%3D%3D+0\\u0026g0.tab=1")
    assert a.raw["fingerprint"] == "1a30ba71cca2921f"


def test_alertmanager_resolved_and_older_sender_without_fingerprint() -> None:
    doc = json.loads(fixture("alertmanager-firing.json"))
    doc["status"] = doc["alerts"][0]["status"] = "resolved"
    doc["alerts"][0]["endsAt"] = "2023-02-06T13:20:00.123456789Z"  # Go's nanoseconds
    a = one("alertmanager", doc)
    assert a.status == "resolved" and a.ends_at == datetime(2023, 2, 6, 13, 20, 0, 123456, tzinfo=timezone.utc)
    del doc["alerts"][0]["fingerprint"]
    old = one("alertmanager", doc)
    assert old.identity.startswith("alertmanager:") and old.identity != a.identity
    assert one("alertmanager", doc).identity == old.identity  # stable: derived from the labels
    doc["alerts"][0]["labels"]["instance"] = "other"
    assert one("alertmanager", doc).identity != old.identity


def test_grafana_grouped_fixture() -> None:
    alerts = parse("grafana", decode(fixture("grafana-firing-grouped.json")))
    assert isinstance(alerts, list)
    assert [a.identity for a in alerts] == ["grafana:c6eadffa33fcdf37", "grafana:bc97ff14869b13e3"]
    assert {a.group_key for a in alerts} == {"grafana:{}:{}"}
    assert [a.labels["alertname"] for a in alerts] == ["High memory usage", "High CPU usage"]
    assert alerts[0].labels["team"] == "blue" and alerts[0].summary == "This alert was triggered for zone us-1"
    assert alerts[1].starts_at == datetime(2021, 10, 12, 7, 56, 3, 157076, tzinfo=timezone.utc)
    assert "https://play.grafana.org/alerting/1afz29v7z/edit" in alerts[0].links


def test_grafana_legacy_dashboard_alerting() -> None:
    legacy = {"dashboardId": 1, "evalMatches": [{"value": 100, "metric": "High value", "tags": None}],
              "imageUrl": "https://grafana.com/assets/img/blog/mixed_styles.png", "message": "Notification Message",
              "orgId": 1, "panelId": 2, "ruleId": 1, "ruleName": "Panel Title",
              "ruleUrl": "http://localhost:3000/d/hZ7BuVbWz/test-dashboard?fullscreen&edit&tab=alert&panelId=2&orgId=1",
              "state": "alerting", "tags": {"tag name": "tag value"}, "title": "[Alerting] Panel Title"}
    a = one("grafana", legacy)
    assert (a.identity, a.status, a.opens, a.summary) == ("grafana:legacy-1-1", "firing", True, "[Alerting] Panel Title")
    assert a.labels == {"tag name": "tag value", "alertname": "Panel Title"} and a.links[0].startswith("http://localhost")
    assert one("grafana", dict(legacy, state="ok")).status == "resolved"
    assert one("grafana", dict(legacy, state="no_data")).opens is False


def test_pagerduty_v3_fixture_and_its_other_events() -> None:
    a = one("pagerduty", fixture("pagerduty-v3-incident-triggered.json"))
    assert (a.identity, a.group_key, a.status, a.opens) == ("pagerduty:Q2CKYRLH85UNN4", "pagerduty:PNE3JZM",
                                                            "firing", True)
    assert (a.service, a.severity, a.summary) == ("Webhook Tester", "low", "Test")
    assert a.links == ["https://aldaviva.pagerduty.com/incidents/Q2CKYRLH85UNN4"]
    doc = json.loads(fixture("pagerduty-v3-incident-triggered.json"))
    resolved = copy.deepcopy(doc)
    resolved["event"]["event_type"] = "incident.resolved"
    assert one("pagerduty", resolved).status == "resolved"
    ack = copy.deepcopy(doc)
    ack["event"]["event_type"] = "incident.acknowledged"
    assert (one("pagerduty", ack).status, one("pagerduty", ack).opens) == ("firing", False)
    note = copy.deepcopy(doc)
    note["event"].update(event_type="incident.annotated",
                         data={"type": "incident_note", "content": "db restarted",
                               "incident": {"id": "Q2CKYRLH85UNN4", "type": "incident_reference"}})
    assert one("pagerduty", note).identity == "pagerduty:Q2CKYRLH85UNN4"
    ping = {"event": {"event_type": "pagey.ping", "data": {}}}
    assert parse("pagerduty", ping) == Control(kind="ping", message="PagerDuty ping received")
    service_event = {"event": {"event_type": "service.updated", "data": {"type": "service", "id": "P1"}}}
    out = parse("pagerduty", service_event)
    assert isinstance(out, Control) and out.kind == "ignored"


def test_pagerduty_v2_messages() -> None:
    doc = {"messages": [
        {"event": "incident.trigger", "created_on": "2020-01-01T00:00:00Z",
         "incident": {"id": "PABC", "incident_number": 5, "title": "api down", "status": "triggered",
                      "urgency": "high", "service": {"id": "PSVC", "name": "api"}}},
        {"event": "incident.resolve", "incident": {"id": "PABC", "title": "api down", "service": {"id": "PSVC"}}},
    ]}
    alerts = parse("pagerduty", doc)
    assert isinstance(alerts, list)
    assert [(a.identity, a.status, a.opens, a.severity) for a in alerts] == [
        ("pagerduty:PABC", "firing", True, "high"), ("pagerduty:PABC", "resolved", False, None)]


def test_datadog_fixture_and_recovery() -> None:
    a = one("datadog", fixture("datadog-triggered.json"))
    assert (a.identity, a.status, a.event) == ("datadog:5485379890863845239", "firing", "Triggered")
    assert a.summary == "[TEST] Host Cluster Alert"
    assert a.starts_at == datetime(2020, 6, 3, 20, 43, 5, tzinfo=timezone.utc)
    cycle = {"alert_cycle_key": "77", "alert_id": "123", "title": "[Recovered] disk full", "tags": "service:db,env:prod",
             "alert_transition": "Recovered", "date": "1591216985000"}
    r = one("datadog", cycle)
    assert (r.identity, r.group_key, r.status, r.service) == ("datadog:77", "datadog:123", "resolved", "db")


def test_opsgenie_fixture_and_close() -> None:
    a = one("opsgenie", fixture("opsgenie-create.json"))
    assert (a.identity, a.group_key, a.status, a.severity) == ("opsgenie:alert-alias", "opsgenie:Server", "firing", "P3")
    assert a.summary == "another alert" and a.labels["tags"] == "vip"
    assert a.starts_at == datetime(2017, 8, 14, 11, 25, 56, 288000, tzinfo=timezone.utc)
    doc = json.loads(fixture("opsgenie-create.json"))
    doc["action"] = "Close"
    assert one("opsgenie", doc).status == "resolved"
    doc["action"] = "Acknowledge"
    assert one("opsgenie", doc).opens is False


def test_sns_cloudwatch_fixture_ok_and_subscription() -> None:
    a = one("sns", fixture("aws-sns-cloudwatch-alarm.json"))
    assert a.identity == "sns:arn:aws:sns:eu-west-1:1234567890:alerta-test:bucketbytesAlarm"
    assert (a.status, a.event, a.summary) == ("firing", "ALARM", "bucket bytes size exceeded")
    assert a.labels["dimension_BucketName"] == "try.alerta.io"
    assert a.starts_at == datetime(2019, 2, 15, 23, 53, 45, 93000, tzinfo=timezone.utc)
    doc = json.loads(fixture("aws-sns-cloudwatch-alarm.json"))
    doc["Message"] = doc["Message"].replace('"NewStateValue":"ALARM"', '"NewStateValue":"OK"')
    assert one("sns", doc).status == "resolved"
    sub = {"Type": "SubscriptionConfirmation", "MessageId": "1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
           "Message": "confirm", "Timestamp": "x", "SignatureVersion": "1", "Signature": "s",
           "SigningCertURL": "https://sns.us-east-1.amazonaws.com/c.pem", "Token": "t0k",
           "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=t0k"}
    out = parse("sns", sub)
    assert isinstance(out, Control) and out.kind == "sns-subscribe" and out.token == "t0k"


def test_generic_shapes() -> None:
    single = {"id": "db-latency", "summary": "DB slow", "service": "checkout", "severity": "critical",
              "labels": {"team": "pay"}, "starts_at": "2026-11-26T10:00:00+01:00"}
    a = one("generic", single)
    assert (a.identity, a.group_key, a.service) == ("generic:db-latency", "generic:db-latency", "checkout")
    assert a.starts_at == datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)
    listed = parse("generic", {"alerts": [single, dict(single, id="b", status="resolved", group="g")]})
    assert isinstance(listed, list) and [x.status for x in listed] == ["firing", "resolved"]
    with pytest.raises(PayloadError, match="alerts\\[0\\]: colour: Extra inputs"):
        parse("generic", dict(single, colour="red"))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("doc", [[], {}, "text", 3, None, {"alerts": "x"}, {"alerts": [1]}, {"event": []},
                                 {"messages": [{}]}, {"Type": "Notification"}, {"action": "Create", "alert": []}])
def test_wrong_shapes_are_422_with_a_message(source: str, doc: object) -> None:
    try:
        out = parse(source, doc)
    except PayloadError as exc:
        assert exc.status == 422 and str(exc)
    else:  # a few odd shapes are legitimately "nothing to do" (PagerDuty events without an incident)
        assert isinstance(out, Control) and source == "pagerduty"


def test_bodies_that_are_not_json_are_400() -> None:
    for body in (b"", b"   ", b"{", b"\xff\xfe", b"<xml/>"):
        with pytest.raises(PayloadError) as info:
            decode(body)
        assert info.value.status == 400


def test_times() -> None:
    assert when("0001-01-01T00:00:00Z") is None
    assert when("2019-02-15T23:53:45.093+0000") == datetime(2019, 2, 15, 23, 53, 45, 93000, tzinfo=timezone.utc)
    assert when(1502709956288) == when("1502709956288") == datetime(2017, 8, 14, 11, 25, 56, 288000, tzinfo=timezone.utc)
