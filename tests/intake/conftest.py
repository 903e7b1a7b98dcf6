"""One `sevflow intake` process for the intake tests, on the session's Prefect server."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.support.alerts import SnsSigner, vectors
from tests.support.services import AwsStandIn
from tests.support.stack import Intake, PrefectServer, Worker

TOKENS = {source: f"{source[:4]}-bearer-{i}c81f0e" for i, source in
          enumerate(("alertmanager", "grafana", "pagerduty", "datadog", "opsgenie", "sns", "generic"))}
REAL_SNS_TOPIC = "arn:aws:sns:us-east-1:041977924901:test"  # of the real AWS-signed fixture (tests/intake/fixtures)
ALERTMANAGER_BASIC = ("alertmanager", "am-basic-pw-4e1b9c")  # Alertmanager's basic_auth
PD_SECRET = vectors("pagerduty-v3-signature-vectors.json")["secret"]
GRAFANA_SECRET = vectors("grafana-hmac-vectors.GENERATED.json")["secret"]
INTAKE_SECRETS = (*TOKENS.values(), PD_SECRET, GRAFANA_SECRET, ALERTMANAGER_BASIC[1])
SNS_TOPIC = "arn:aws:sns:eu-west-1:123456789012:sevflow-alarms"

RULES = """\
rules:
  # alerts that name their service start an application rollback of it
  - name: labelled
    match:
      labels: {service: "shop-*"}
    procedure: application-rollback
    service_label: service
    severity: SEV-2
"""


def save_sources(aws_origin: str, **grafana: Any) -> None:
    from pydantic import SecretStr

    from sevflow.blocks import AlertSource

    for source, token in TOKENS.items():
        fields: dict[str, Any] = {"bearer_token": SecretStr(token)}
        if source == "pagerduty":
            fields["signing_secret"] = SecretStr(PD_SECRET)
        if source == "alertmanager":  # either the token or basic auth
            fields |= {"basic_auth_username": ALERTMANAGER_BASIC[0], "basic_auth_password": SecretStr(ALERTMANAGER_BASIC[1])}
        if source == "grafana":
            fields |= {"signing_secret": SecretStr(GRAFANA_SECRET)} | grafana
        if source == "sns":
            fields = {"allowed_topics": [SNS_TOPIC, REAL_SNS_TOPIC], "trusted_origins": [aws_origin]}
        AlertSource(**fields).save(source, overwrite=True)


@pytest.fixture(scope="session")
def sns_signer() -> SnsSigner:
    return SnsSigner()


@pytest.fixture(scope="session")
def aws(sns_signer: SnsSigner) -> Iterator[AwsStandIn]:
    stand_in = AwsStandIn(sns_signer.pem)
    yield stand_in
    stand_in.close()


@pytest.fixture(scope="session")
def intake(stack: PrefectServer, worker: Worker, aws: AwsStandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Intake]:
    save_sources(aws.url)
    process = Intake(stack.env(), tmp_path_factory.mktemp("intake"), RULES)
    process.start()
    yield process
    process.stop()
    log = process.log_path.read_text()
    leaked = [s for s in INTAKE_SECRETS if s in log]
    assert not leaked, "a sender secret reached the intake's log"


class StoreView:
    """Reads the intake's store file: what was accepted, as stored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, where: str = "1=1", args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(f"SELECT alerts.*, deliveries.body AS raw FROM alerts LEFT JOIN deliveries "
                                f"USING (delivery_id) WHERE {where} ORDER BY seq", args).fetchall()
        finally:
            conn.close()

    def count(self) -> int:
        return len(self.rows())

    def closed(self, incident_id: str) -> bool:
        """The intake closed the incident (its run ended)."""
        conn = sqlite3.connect(self.path)
        try:
            row = conn.execute("SELECT closed_at FROM incidents WHERE incident_id=?", (incident_id,)).fetchone()
            return bool(row and row[0])
        finally:
            conn.close()

    def deliveries(self, delivery_id: int) -> int:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute("SELECT count(*) FROM deliveries WHERE delivery_id=?", (delivery_id,)).fetchone()[0]
        finally:
            conn.close()


@pytest.fixture
def stored(intake: Intake) -> StoreView:
    return StoreView(intake.state_dir / "alerts.db")


def post(intake: Intake, source: str, body: bytes | dict | list, token: str | None = "default",
         headers: dict[str, str] | None = None) -> httpx.Response:
    h = dict(headers or {})
    if token == "default":
        token = TOKENS[source]
    if token:
        h["Authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        import json
        body = json.dumps(body).encode()
    h.setdefault("Content-Type", "application/json")
    return httpx.post(f"{intake.url}/alerts/{source}", content=body, headers=h, timeout=15)
