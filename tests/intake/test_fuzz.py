"""No delivery, however malformed, gets a 500 (hypothesis, over real HTTP)."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevflow.intake.alerts import SOURCES
from tests.intake.conftest import TOKENS
from tests.support.alerts import fixture
from tests.support.stack import Intake

ALLOWED = {200, 202, 400, 401, 404, 413, 422}
FIXTURE_DOCS = [json.loads(fixture(n)) for n in ("alertmanager-firing.json", "grafana-firing-grouped.json",
                                                  "pagerduty-v3-incident-triggered.json", "datadog-triggered.json",
                                                  "opsgenie-create.json", "aws-sns-cloudwatch-alarm.json")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    """A real payload with one value somewhere replaced by anything JSON can hold."""
    doc = json.loads(json.dumps(draw(st.sampled_from(FIXTURE_DOCS))))
    node = doc
    for _ in range(draw(st.integers(0, 3))):
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
    return json.dumps(doc).encode()


bodies = st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()), mutated_fixture())
header_names = st.sampled_from(["Authorization", "X-PagerDuty-Signature", "X-Grafana-Alerting-Signature",
                                "Content-Type", "X-Grafana-Alerting-Timestamp", "X-Anything"])
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(source=st.sampled_from([*SOURCES, "unknown", "..%2f", ""]), body=bodies,
       headers=st.dictionaries(header_names, header_values, max_size=3), good_token=st.booleans())
def test_no_input_gets_a_500(intake: Intake, source: str, body: bytes, headers: dict[str, str],
                             good_token: bool) -> None:
    if good_token and source in TOKENS:
        headers["Authorization"] = f"Bearer {TOKENS[source]}"  # past auth: the parsers get the body
    r = httpx.post(f"{intake.url}/alerts/{source}", content=body, headers=headers, timeout=15)
    assert r.status_code in ALLOWED, (r.status_code, r.text)
    assert r.status_code < 500
