"""No delivery, however malformed, gets a 5xx (hypothesis, over real HTTP).

Two fuzzers: one without credentials (anything, anywhere), and one that reaches past
authentication for every sender: each fuzzed body carries that sender's valid token and
signature (HMAC for PagerDuty and Grafana, an RSA-signed envelope for SNS), so the parsers,
the router and the store see it. Both throw deep nesting, huge and out-of-range numbers,
non-ASCII text and overlong or odd headers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevflow.intake.alerts import SOURCES
from tests.intake.conftest import GRAFANA_SECRET, PD_SECRET, SNS_TOPIC, TOKENS
from tests.support.alerts import SnsSigner, fixture
from tests.support.services import AwsStandIn
from tests.support.stack import Intake

ALLOWED = {200, 202, 400, 401, 404, 413, 422, 429}
FIXTURES = {"alertmanager": "alertmanager-firing.json", "grafana": "grafana-firing-grouped.json",
            "pagerduty": "pagerduty-v3-incident-triggered.json", "datadog": "datadog-triggered.json",
            "opsgenie": "opsgenie-create.json", "sns": "aws-sns-cloudwatch-alarm.json"}
FIXTURE_DOCS = {source: json.loads(fixture(name)) for source, name in FIXTURES.items()}
FIXTURE_DOCS["generic"] = {"id": "fuzz", "summary": "fuzzed", "labels": {"service": "fuzz-svc"},
                           "starts_at": "2026-11-26T09:00:00Z"}
# what the SNS envelope carries: the CloudWatch alarm inside it is what gets fuzzed
SNS_ALARM = json.loads(FIXTURE_DOCS["sns"]["Message"])
FIXTURE_DOCS["sns"] = SNS_ALARM


def deep(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = [node]
    return node


hostile = st.sampled_from([
    1e300, -1e300, 10**30, -(10**30), 2**63, 1.7976931348623157e308, 5e-324, 0, -1,
    "9" * 400, "1e300", "-0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "99999-01-01T00:00:00Z",
    "2026-13-45T99:99:99Z", "ž" * 50, "🚨 incident ✓ 日本語", "\u0000\u001f\ud7ff", "x" * 5000,
    deep(40), deep(31), {"a": deep(20)}, [], {}, None, True,
])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | hostile,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """A real payload with one value somewhere replaced by anything JSON can hold."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for _ in range(draw(st.integers(0, 4))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()) or not isinstance(node[key], (dict, list)):
                node[key] = draw(json_values)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if draw(st.booleans()) or not isinstance(node[i], (dict, list)):
                node[i] = draw(json_values)
                break
            node = node[i]
    return doc


raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 100_000).map(lambda n: b"[" * n),
    st.integers(30, 2000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"[1e400]", b"NaN", b'{"startsAt": Infinity}', b"1" * 5000, b'"\\ud800"', b"\xff\xfe{}"]),
)
header_names = st.sampled_from(["Authorization", "X-PagerDuty-Signature", "X-Grafana-Alerting-Signature",
                                "Content-Type", "X-Grafana-Alerting-Timestamp", "X-Anything", "X-Webhook-Id"])
header_values = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip),
    st.integers(1, 400).map(lambda n: "9" * n),  # timestamps: plain digits, absurdly many
    st.sampled_from(["١٢٣٤٥", "²³", "1e9", "-1", "0x10", "v1=" + "ab" * 32]),
    st.text(st.characters(min_codepoint=0xA0, max_codepoint=0xFF), min_size=1, max_size=40),  # latin-1
    st.integers(1000, 16000).map(lambda n: "v" * n),  # overlong
)


def _encode(headers: dict[str, str]) -> dict[str, bytes]:
    return {k: v.encode("latin-1", "replace") for k, v in headers.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(source=st.sampled_from([*SOURCES, "unknown", "..%2f", ""]),
       body=st.one_of(raw_bodies, json_values.map(lambda v: json.dumps(v).encode())),
       headers=st.dictionaries(header_names, header_values, max_size=3), good_token=st.booleans())
def test_no_input_gets_a_5xx(intake: Intake, source: str, body: bytes, headers: dict[str, str],
                             good_token: bool) -> None:
    if good_token and source in TOKENS:
        headers["Authorization"] = f"Bearer {TOKENS[source]}"
    r = httpx.post(f"{intake.url}/alerts/{source}", content=body, headers=_encode(headers), timeout=15)
    assert r.status_code in ALLOWED, (r.status_code, r.text[:300])


def signed(source: str, body: bytes, signer: SnsSigner, aws: AwsStandIn) -> tuple[bytes, dict[str, str]]:
    """The body and headers a correctly configured sender sends: valid credentials over these bytes."""
    headers = {"Authorization": f"Bearer {TOKENS[source]}", "Content-Type": "application/json"}
    if source == "pagerduty":
        headers["X-PagerDuty-Signature"] = "v1=" + hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest()
    if source == "grafana":
        headers["X-Grafana-Alerting-Signature"] = hmac.new(GRAFANA_SECRET.encode(), body, hashlib.sha256).hexdigest()
    if source == "sns":  # the fuzzed bytes are the alarm inside a validly signed envelope
        del headers["Authorization"]
        envelope = {"Type": "Notification", "MessageId": hashlib.sha256(body).hexdigest()[:36], "TopicArn": SNS_TOPIC,
                    "Subject": "ALARM: fuzz", "Message": body.decode("utf-8", "replace"),
                    "Timestamp": "2026-11-26T10:00:01.000Z", "SignatureVersion": "1", "Signature": "",
                    "SigningCertURL": f"{aws.url}/SimpleNotificationService-fuzz.pem"}
        body = json.dumps(signer.sign(envelope)).encode()
    return body, headers


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), source=st.sampled_from(SOURCES),
       extra=st.dictionaries(st.sampled_from(["X-Grafana-Alerting-Timestamp", "X-Webhook-Id", "X-Anything",
                                              "User-Agent"]), header_values, max_size=2))
def test_fuzz_past_authentication_never_gets_a_5xx(intake: Intake, sns_signer: SnsSigner, aws: AwsStandIn,
                                                   data: st.DataObject, source: str, extra: dict[str, str]) -> None:
    doc = data.draw(st.one_of(mutated(FIXTURE_DOCS[source]), json_values), label="doc")
    raw = data.draw(st.one_of(st.just(json.dumps(doc, ensure_ascii=data.draw(st.booleans())).encode()),
                              raw_bodies), label="raw")
    body, headers = signed(source, raw, sns_signer, aws)
    r = httpx.post(f"{intake.url}/alerts/{source}", content=body, headers=_encode(extra | headers), timeout=15)
    assert r.status_code in ALLOWED, (r.status_code, r.text[:300])
    assert r.status_code != 401, r.text  # valid credentials were sent: the body got past them
