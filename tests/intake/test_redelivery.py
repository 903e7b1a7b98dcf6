"""Exactly one run per incident for every way senders re-deliver, counted on a real Prefect
server, and exactly one run creation per incident, counted by a proxy in front of its API.

The rule (README, "Sending alerts to sevflow"): an alert belongs to the incident that holds
the same alert (identity) while that incident is open, or, once it has closed, the incident
that held this very firing (identity and episode: Alertmanager's and Grafana's `startsAt`,
Datadog's alert cycle, PagerDuty's incident). Other alerts of the same service and group join
an open incident. Only a firing that no incident has held, with no open incident of its group,
opens a new one.

This module has its own Prefect server whose procedures are registered but not served: runs
stay Scheduled (open) until a test ends them through the API, as a finished procedure would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.intake.conftest import (ALERTMANAGER_BASIC, GRAFANA_SECRET, PD_SECRET, RULES, SNS_TOPIC, TOKENS, StoreView,
                                   save_sources)
from tests.support.alerts import SnsSigner, fixture, sns_alarm
from tests.support.proxy import CountingProxy
from tests.support.services import AwsStandIn
from tests.support.stack import Intake, PrefectServer, register_procedures
from tests.support.wait import until

FIXTURES = Path(__file__).parent / "fixtures"
PD_SERVICE = "shop-pagerduty"
COUNTED_RULES = RULES + f"""\
  # PagerDuty names its service, not a label: one rule per PagerDuty service
  - name: pagerduty
    match: {{source: pagerduty}}
    procedure: application-rollback
    service: {PD_SERVICE}
    severity: SEV-1
  # Opsgenie and SNS name no service label either: one rule each, for one service
  - name: opsgenie
    match: {{source: opsgenie}}
    procedure: application-rollback
    service: shop-opsgenie
    severity: SEV-2
  - name: sns
    match: {{source: sns}}
    procedure: application-rollback
    service: shop-sns
    severity: SEV-2
"""


class Counted:
    def __init__(self, server: PrefectServer, proxy: CountingProxy, intake: Intake) -> None:
        self.server, self.proxy, self.intake = server, proxy, intake
        self.store = StoreView(intake.state_dir / "alerts.db")

    def post(self, source: str, doc: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        h = {"Authorization": f"Bearer {TOKENS[source]}", "Content-Type": "application/json", **(headers or {})}
        if source == "grafana":
            h["X-Grafana-Alerting-Signature"] = hmac.new(GRAFANA_SECRET.encode(), body, hashlib.sha256).hexdigest()
        r = httpx.post(f"{self.intake.url}/alerts/{source}", content=body, headers=h, timeout=15)
        assert r.status_code == 202, r.text
        return r.json()

    def runs(self, incident_id: str) -> list[dict[str, Any]]:
        r = httpx.post(f"{self.server.api_url}/flow_runs/filter", timeout=10,
                       json={"flow_runs": {"tags": {"all_": [f"incident:{incident_id}"]}}})
        r.raise_for_status()
        return r.json()

    def run_of(self, incident_id: str) -> str:
        runs = until(lambda: self.runs(incident_id), what=f"the run of {incident_id}")
        return runs[0]["id"]

    def end_run(self, incident_id: str) -> None:
        """The procedure finished (as its run would end), and the intake notices."""
        run_id = self.run_of(incident_id)
        r = httpx.post(f"{self.server.api_url}/flow_runs/{run_id}/set_state", timeout=10,
                       json={"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True})
        r.raise_for_status()
        until(lambda: self.store.closed(incident_id), what=f"the intake to close {incident_id}")

    def delivered(self) -> None:
        until(lambda: self.intake.health()["queued"] == 0, what="the intake to deliver everything")

    def one_run_each(self, *incidents: str) -> None:
        """Each incident has exactly one run, created exactly once."""
        self.delivered()
        for incident in incidents:
            assert len(self.runs(incident)) == 1, incident
            assert self.proxy.creates_for(incident) == 1, (incident, self.proxy.creates_for(incident))


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory, aws: AwsStandIn) -> Iterator[Counted]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("redelivery")
    (root / "prefect").mkdir()
    server = PrefectServer(root / "prefect")
    server.start()
    proxy = CountingProxy(server.api_url[: -len("/api")])
    intake = Intake(server.env() | {"PREFECT_API_URL": proxy.api_url}, root / "intake", COUNTED_RULES)
    try:
        register_procedures(server.api_url)
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            save_sources(aws.url)
            from sevflow.setup import ensure_defaults

            ensure_defaults()
        intake.start()
        yield Counted(server, proxy, intake)
    finally:
        intake.stop()
        proxy.close()
        server.stop()


def am_group(service: str, alerts: list[tuple[str, str, str]], group: str = "errors") -> dict[str, Any]:
    """An Alertmanager webhook (version 4) notification for one group, as Alertmanager sends it:
    `alerts` are (alertname, status, startsAt)."""
    entries = []
    for name, status, starts in alerts:
        labels = {"alertname": name, "service": service, "severity": "critical", "group": group}
        fingerprint = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
        entries.append({"status": status, "labels": labels, "annotations": {"summary": f"{name} on {service}"},
                        "startsAt": starts, "endsAt": "2026-11-26T10:30:00Z" if status == "resolved" else
                        "0001-01-01T00:00:00Z", "generatorURL": f"http://prometheus:9090/graph?g0.expr={name}",
                        "fingerprint": fingerprint})
    firing = any(status == "firing" for _, status, _ in alerts)
    return {"receiver": "sevflow", "status": "firing" if firing else "resolved", "alerts": entries,
            "groupLabels": {"service": service, "group": group}, "commonLabels": {"service": service},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "version": "4",
            "groupKey": f'{{}}:{{group="{group}", service="{service}"}}', "truncatedAlerts": 0}


def service() -> str:
    return f"shop-{uuid.uuid4().hex[:8]}"


T1, T2 = "2026-11-26T09:00:00.000Z", "2026-11-26T11:00:00.000Z"


@pytest.mark.parametrize("sender", ["alertmanager", "grafana"])
def test_group_resent_after_its_run_ended_opens_nothing(counted: Counted, sender: str) -> None:
    svc = service()
    group = am_group(svc, [("HighErrorRate", "firing", T1), ("HighLatency", "firing", T1)])
    first = counted.post(sender, group)["alerts"]
    assert [a["outcome"] for a in first] == ["started", "attached"]
    incident = first[0]["incident_id"]
    counted.end_run(incident)
    # repeat_interval: the same group, the same alerts, after the incident's run ended
    for _ in range(3):
        again = counted.post(sender, group)["alerts"]
        assert [(a["outcome"], a["incident_id"]) for a in again] == [("duplicate", incident)] * 2
    counted.one_run_each(incident)


def test_resolved_then_refiring_within_the_run_is_the_same_incident(counted: Counted) -> None:
    svc = service()
    opened = counted.post("alertmanager", am_group(svc, [("DiskFull", "firing", T1)]))["alerts"][0]
    incident = opened["incident_id"]
    assert opened["outcome"] == "started"
    resolved = counted.post("alertmanager", am_group(svc, [("DiskFull", "resolved", T1)]))["alerts"][0]
    assert (resolved["outcome"], resolved["incident_id"]) == ("resolved", incident)
    refired = counted.post("alertmanager", am_group(svc, [("DiskFull", "firing", T2)]))["alerts"][0]
    assert (refired["outcome"], refired["incident_id"]) == ("duplicate", incident)
    counted.one_run_each(incident)


def test_resolved_then_refiring_after_the_run_is_one_new_incident(counted: Counted) -> None:
    svc = service()
    incident = counted.post("alertmanager", am_group(svc, [("DiskFull", "firing", T1)]))["alerts"][0]["incident_id"]
    counted.end_run(incident)
    # the old firing resolves late: recorded on its own (closed) incident, opens nothing
    late = counted.post("alertmanager", am_group(svc, [("DiskFull", "resolved", T1)]))["alerts"][0]
    assert (late["outcome"], late["incident_id"]) == ("resolved", incident)
    # a new firing of the alert after the run ended is a new incident, once, however often sent
    refired = [counted.post("alertmanager", am_group(svc, [("DiskFull", "firing", T2)]))["alerts"][0]
               for _ in range(3)]
    assert [a["outcome"] for a in refired] == ["started", "duplicate", "duplicate"]
    second = refired[0]["incident_id"]
    assert second != incident and {a["incident_id"] for a in refired} == {second}
    # and the first firing re-sent now is still the first incident's
    old = counted.post("alertmanager", am_group(svc, [("DiskFull", "firing", T1)]))["alerts"][0]
    assert (old["outcome"], old["incident_id"]) == ("duplicate", incident)
    counted.one_run_each(incident, second)


def test_group_changes_join_the_open_incident(counted: Counted) -> None:
    svc = service()
    a = counted.post("alertmanager", am_group(svc, [("A", "firing", T1)]))["alerts"]
    incident = a[0]["incident_id"]
    grown = counted.post("alertmanager", am_group(svc, [("A", "firing", T1), ("B", "firing", T1)]))["alerts"]
    assert [(x["outcome"], x["incident_id"]) for x in grown] == [("duplicate", incident), ("attached", incident)]
    shrunk = counted.post("alertmanager", am_group(svc, [("A", "resolved", T1), ("B", "firing", T1),
                                                         ("C", "firing", T2)]))["alerts"]
    assert [(x["outcome"], x["incident_id"]) for x in shrunk] == [("resolved", incident), ("duplicate", incident),
                                                                   ("attached", incident)]
    counted.one_run_each(incident)
    # after the run ended the whole changed group is re-sent: still nothing new
    counted.end_run(incident)
    again = counted.post("alertmanager", am_group(svc, [("A", "resolved", T1), ("B", "firing", T1),
                                                        ("C", "firing", T2)]))["alerts"]
    assert {(x["outcome"], x["incident_id"]) for x in again} <= {("resolved", incident), ("duplicate", incident)}
    counted.one_run_each(incident)


def test_datadog_template_cycle_retriggers_and_recovers_one_incident(counted: Counted) -> None:
    """The README's Datadog payload template: the alert cycle key is the identity."""
    svc = service()

    def dd(name: str) -> bytes:
        return (FIXTURES / name).read_bytes().replace(b"shop-checkout", svc.encode())
    opened = counted.post("datadog", dd("datadog-template-triggered.json"))["alerts"][0]
    assert opened["outcome"] == "started"
    incident = opened["incident_id"]
    renotified = counted.post("datadog", dd("datadog-template-retriggered.json"))["alerts"][0]
    assert (renotified["outcome"], renotified["incident_id"]) == ("duplicate", incident)
    recovered = counted.post("datadog", dd("datadog-template-recovered.json"))["alerts"][0]
    assert (recovered["outcome"], recovered["incident_id"]) == ("resolved", incident)
    counted.one_run_each(incident)


def test_pagerduty_webhook_retries_are_one_incident(counted: Counted) -> None:
    doc = json.loads(fixture("pagerduty-v3-incident-triggered.json"))
    doc["event"]["data"]["id"] = f"Q{uuid.uuid4().hex[:12].upper()}"
    body = json.dumps(doc).encode()
    sig = {"X-PagerDuty-Signature": "v1=" + hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest(),
           "X-Webhook-Id": "wh-1"}
    opened = counted.post("pagerduty", body, sig)["alerts"][0]
    assert opened["outcome"] == "started", opened
    incident = opened["incident_id"]
    for _ in range(2):  # PagerDuty retries the same delivery (same X-Webhook-Id) on a timeout
        assert counted.post("pagerduty", body, sig)["alerts"][0]["incident_id"] == incident
    counted.one_run_each(incident)


def test_opsgenie_actions_and_retries_are_one_incident_per_alert(counted: Counted) -> None:
    """Opsgenie posts every action on an alert (Create, AddNote, Acknowledge, Close) and retries a
    delivery it saw fail; the alias is the identity, the alertId the episode."""
    alias = f"checkout-down-{uuid.uuid4().hex[:6]}"

    def og(action: str, alert_id: str) -> dict[str, Any]:
        doc = json.loads(fixture("opsgenie-create.json"))
        doc["action"] = action
        doc["alert"] |= {"alias": alias, "alertId": alert_id, "entity": alias}
        return doc

    first_id = str(uuid.uuid4())
    opened = counted.post("opsgenie", og("Create", first_id))["alerts"][0]
    assert opened["outcome"] == "started", opened
    incident = opened["incident_id"]
    for action in ("Create", "AddNote", "Acknowledge"):  # a retried Create, then the alert's life
        later = counted.post("opsgenie", og(action, first_id))["alerts"][0]
        assert (later["outcome"], later["incident_id"]) == ("duplicate", incident), (action, later)
    closed = counted.post("opsgenie", og("Close", first_id))["alerts"][0]
    assert (closed["outcome"], closed["incident_id"]) == ("resolved", incident)
    counted.end_run(incident)
    # after the run ended: the old alert's Create re-sent opens nothing ...
    old = counted.post("opsgenie", og("Create", first_id))["alerts"][0]
    assert (old["outcome"], old["incident_id"]) == ("duplicate", incident)
    # ... a new Opsgenie alert under the same alias is one new incident, however often sent
    second_id = str(uuid.uuid4())
    again = [counted.post("opsgenie", og("Create", second_id))["alerts"][0] for _ in range(3)]
    assert [a["outcome"] for a in again] == ["started", "duplicate", "duplicate"]
    second = again[0]["incident_id"]
    assert second != incident and {a["incident_id"] for a in again} == {second}
    counted.one_run_each(incident, second)


def test_sns_redeliveries_and_alarm_cycles_are_one_incident_each(counted: Counted, aws: AwsStandIn,
                                                                    sns_signer: SnsSigner) -> None:
    """SNS re-delivers a message (same MessageId) until it gets a 2xx; a CloudWatch alarm goes
    ALARM -> OK -> ALARM; each state change carries its StateChangeTime (the episode)."""
    cert = f"{aws.url}/SimpleNotificationService-test.pem"
    alarm = f"api-errors-{uuid.uuid4().hex[:6]}"

    def sns(state: str, changed: str) -> dict[str, Any]:
        body = json.dumps(sns_signer.sign(sns_alarm(SNS_TOPIC, alarm, state=state, cert_url=cert,
                                                    changed=changed))).encode()
        r = httpx.post(f"{counted.intake.url}/alerts/sns", content=body, timeout=15,
                       headers={"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"})
        assert r.status_code == 202, r.text
        return r.json()["alerts"][0]

    first = [sns("ALARM", "2026-11-26T09:00:00.000+0000") for _ in range(3)]  # delivered, then re-delivered
    assert [a["outcome"] for a in first] == ["started", "duplicate", "duplicate"]
    incident = first[0]["incident_id"]
    ok = sns("OK", "2026-11-26T09:20:00.000+0000")
    assert (ok["outcome"], ok["incident_id"]) == ("resolved", incident)
    counted.end_run(incident)
    # the old ALARM re-delivered late opens nothing; the alarm firing again is one new incident
    late = sns("ALARM", "2026-11-26T09:00:00.000+0000")
    assert (late["outcome"], late["incident_id"]) == ("duplicate", incident)
    again = [sns("ALARM", "2026-11-26T11:00:00.000+0000") for _ in range(2)]
    assert [a["outcome"] for a in again] == ["started", "duplicate"]
    second = again[0]["incident_id"]
    assert second != incident
    counted.one_run_each(incident, second)


def test_one_run_creation_per_incident_under_concurrent_alerts(counted: Counted) -> None:
    """New incidents' runs are created by the opener and would be by the delivery pass too:
    the proxy in front of Prefect sees one creation per incident."""
    services = [service() for _ in range(8)]
    groups = [am_group(svc, [("Down", "firing", T1), ("Slow", "firing", T1)]) for svc in services]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda g: counted.post("alertmanager", g), groups * 3))
    incidents = {a["alerts"][0]["incident_id"] for a in answers}
    assert len(incidents) == len(services)
    counted.one_run_each(*incidents)


def test_alertmanager_basic_auth_receiver(counted: Counted) -> None:
    """The README's Alertmanager receiver with `basic_auth` instead of a bearer token."""
    svc = service()
    body = json.dumps(am_group(svc, [("Probe", "firing", T1)])).encode()
    ok = httpx.post(f"{counted.intake.url}/alerts/alertmanager", content=body, auth=ALERTMANAGER_BASIC, timeout=15)
    assert ok.status_code == 202, ok.text
    wrong = httpx.post(f"{counted.intake.url}/alerts/alertmanager", content=body,
                       auth=(ALERTMANAGER_BASIC[0], "wrong"), timeout=15)
    assert wrong.status_code == 401 and "basic auth" in wrong.json()["error"]
    counted.one_run_each(ok.json()["alerts"][0]["incident_id"])


def test_deleted_run_becomes_a_dead_letter_not_a_retry_loop(counted: Counted, tmp_path: Path) -> None:
    svc = service()
    group = am_group(svc, [("Gone", "firing", T1)])
    incident = counted.post("alertmanager", group)["alerts"][0]["incident_id"]
    run_id = counted.run_of(incident)
    counted.delivered()
    httpx.delete(f"{counted.server.api_url}/flow_runs/{run_id}", timeout=10).raise_for_status()
    until(lambda: counted.store.closed(incident), what="the intake to close the incident whose run is gone")
    # a re-delivery of that firing belongs to the deleted run: Prefect answers 404, for good
    again = counted.post("alertmanager", group)["alerts"][0]
    assert (again["outcome"], again["incident_id"]) == ("duplicate", incident)
    health = until(lambda: (h := counted.intake.health())["dead_letters"] >= 1 and h,
                   what="the alert to become a dead letter")
    assert health["queued"] == 0 and health["prefect_reachable"] is not False  # no backoff, no "unreachable"
    letter = health["recent_dead_letters"][0]
    assert letter["incident_id"] == incident and ("404" in letter["error"] or "not found" in letter["error"].lower())
    # and still accepted and delivered: the next new incident goes through at once
    fresh = counted.post("alertmanager", am_group(service(), [("Fresh", "firing", T1)]))["alerts"][0]
    counted.one_run_each(fresh["incident_id"])
    # the CLI lists it and exits 1 (someone should look)
    cli = subprocess.run([sys.executable, "-m", "sevflow", "intake-dead-letters", "--state",
                          str(counted.intake.state_dir)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, COLUMNS="250"))
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert incident in cli.stdout
