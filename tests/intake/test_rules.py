"""Routing rules: a bad file is refused naming its line; matching is first-match-wins. Pure."""

from __future__ import annotations

import pytest

from sevflow.errors import RulesError
from sevflow.intake.alerts import Alert
from sevflow.intake.rules import EXAMPLE, load_rules
from sevflow.models import Severity

def _procedures() -> dict[str, list[str]]:
    # The real procedures' parameters: a rule may only name parameters a procedure has.
    import inspect

    from sevflow.deployments import procedures

    return {name: list(inspect.signature(f.fn).parameters) for name, f in procedures().items()}


PROCS = _procedures()

GOOD = """\
rules:
  - name: probe-down
    match:
      source: [alertmanager, grafana]
      labels:
        alertname: "Probe*"
    procedure: application-rollback
    service: checkout
    severity: SEV-1
    parameters: {policy: strict}
  - name: by-label
    match:
      severity: [critical, P1]
    procedure: configuration-rollback
    service_label: service
    severity: sev2
    parameters: {config_file: app.env}
"""


def alert(**kw: object) -> Alert:
    base = dict(source="alertmanager", identity="alertmanager:1", group_key="g", status="firing", summary="s")
    return Alert.model_validate(base | kw)


def test_first_matching_rule_wins() -> None:
    rules = load_rules(GOOD, "rules.yaml", PROCS)
    r = rules.route(alert(labels={"alertname": "ProbeFailure"}, severity="critical"))
    assert r is not None and (r.rule, r.service, r.severity, r.parameters) == ("probe-down", "checkout", Severity.SEV1,
                                                                               {"policy": "strict"})
    r2 = rules.route(alert(source="datadog", severity="P1", labels={"service": "db"}))
    assert r2 is not None and (r2.rule, r2.service, r2.severity) == ("by-label", "db", Severity.SEV2)
    assert rules.route(alert(source="datadog", severity="P1")) is None  # no service label: no rule
    assert rules.route(alert(severity="warning")) is None


def test_the_example_file_loads() -> None:
    assert load_rules(EXAMPLE, "x", PROCS).rules == []
    assert load_rules("", "x", PROCS).rules == []


@pytest.mark.parametrize("edit, line, words", [
    (("SEV-1", "SEV-7"), 9, "unknown severity 'SEV-7'"),
    (("[alertmanager, grafana]", "[alertmanager, nagios]"), 4, "unknown source 'nagios'"),
    (("procedure: application-rollback", "procedure: restart-everything"), 7, "unknown procedure 'restart-everything'"),
    (("{policy: strict}", "{polcy: strict}"), 10, "has no parameter polcy"),
    (("{policy: strict}", "{incident_id: x}"), 10, "set by the intake"),
    (("    service: checkout\n", "    servce: checkout\n"), 8, "unknown key"),
    (("    service: checkout\n", ""), 2, "exactly one of `service`"),
    (("name: by-label", "name: probe-down"), 11, "already used on line 2"),
    (("labels:\n        alertname", "labels:\n       - alertname"), 5, "match.labels: Input should be a valid dict"),
    (("alertname: \"Probe*\"", "alertname: \"Probe*"), 6, "not valid YAML"),
])
def test_errors_name_the_line(edit: tuple[str, str], line: int, words: str) -> None:
    text = GOOD.replace(*edit)
    assert text != GOOD
    with pytest.raises(RulesError) as info:
        load_rules(text, "rules.yaml", PROCS)
    message = str(info.value)
    assert message.startswith(f"rules.yaml line {line}:"), message
    assert words in message, message


def test_whole_file_shape() -> None:
    with pytest.raises(RulesError, match="line 1: the file holds one key"):
        load_rules("- a\n- b\n", "r", PROCS)
    with pytest.raises(RulesError, match="`rules` must be a list"):
        load_rules("rules: {a: 1}\n", "r", PROCS)


def test_a_rule_for_a_procedure_run_on_a_host_fills_its_host_parameter() -> None:
    from sevflow.intake.deliver import target_parameter
    from sevflow.intake.rules import load_rules

    rules = load_rules("rules:\n  - name: disk\n    match: {labels: {alertname: DiskFull}}\n    procedure: memory-disk-full\n"
                       "    service_label: instance\n    severity: SEV-2\n", "rules.yaml", PROCS)
    assert [r.procedure for r in rules.rules] == ["memory-disk-full"]
    assert target_parameter("memory-disk-full") == "host"
    assert target_parameter("application-rollback") == "service"
