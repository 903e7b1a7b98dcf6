"""Routing rules: which alert starts which procedure, for which service, at which severity.

The rules live in a YAML file meant to be reviewed like code. The first rule that matches
wins; an alert no rule matches starts nothing (it is answered, logged and counted).

```yaml
rules:
  - name: checkout-down                # unique; recorded on every alert it routes
    match:                             # every matcher given must match (all optional)
      source: [alertmanager, grafana]  # one value or a list
      severity: [critical, P1]         # the sender's severity; globs allowed
      labels:                          # label -> value (glob) or list of values
        alertname: "Probe*"
        team: payments
    procedure: application-rollback    # a served procedure
    service: checkout                  # the service target block ...
    # service_label: service           # ... or take it from this alert label
    severity: SEV-1                    # the incident's severity
    parameters:                        # more parameters for the procedure
      policy: default
```

Loading checks everything it can without a server (names, procedures, parameter names,
severities) and raises `RulesError` naming the line. Pure: no I/O imports.
"""

from __future__ import annotations

import re
from fnmatch import translate
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from sevflow.errors import RulesError
from sevflow.intake.alerts import SOURCES, Alert
from sevflow.models import Severity

# parameters the intake fills in itself
INTAKE_PARAMETERS = ("service", "severity", "incident_id", "reason")

Matcher = str | list[str]


def _values(m: Matcher) -> list[str]:
    return [m] if isinstance(m, str) else m


def _pattern(m: Matcher) -> re.Pattern[str]:
    """One compiled regex for a value or list of globs (case-sensitive)."""
    return re.compile("|".join(f"(?:{translate(v)})" for v in _values(m)) or "(?!)")


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Matcher | None = None
    severity: Matcher | None = None
    labels: dict[str, Matcher] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: Matcher | None) -> Matcher | None:
        for s in _values(v) if v is not None else []:
            if s not in SOURCES:
                raise ValueError(f"unknown source {s!r}; known: {', '.join(SOURCES)}")
        return v

    _compiled: tuple[re.Pattern[str] | None, list[tuple[str, re.Pattern[str]]]] = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._compiled = (_pattern(self.severity) if self.severity is not None else None,
                          [(name, _pattern(m)) for name, m in self.labels.items()])

    def matches(self, alert: Alert) -> bool:
        if self.source is not None and alert.source not in _values(self.source):
            return False
        severity, labels = self._compiled
        if severity is not None and not severity.match(alert.severity or ""):
            return False
        for name, pattern in labels:
            value = alert.labels.get(name)
            if value is None or not pattern.match(value):
                return False
        return True


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    procedure: str
    service: str | None = None
    service_label: str | None = None
    severity: Severity
    parameters: dict[str, Any] = Field(default_factory=dict)
    line: int = 0

    @field_validator("severity", mode="before")
    @classmethod
    def _severity(cls, v: Any) -> Severity:
        return Severity.parse(v)

    @field_validator("parameters")
    @classmethod
    def _not_ours(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(v) & set(INTAKE_PARAMETERS))
        if taken:
            raise ValueError(f"{', '.join(taken)} are set by the intake from the alert and the rule")
        return v

    @model_validator(mode="after")
    def _one_service(self) -> Rule:
        if bool(self.service) == bool(self.service_label):
            raise ValueError("give exactly one of `service` (a service target block) or `service_label`")
        return self


class Route(BaseModel):
    """What a matched alert starts."""

    rule: str
    procedure: str
    service: str
    severity: Severity
    parameters: dict[str, Any] = Field(default_factory=dict)


class RuleSet(BaseModel):
    rules: list[Rule] = Field(default_factory=list)
    path: str = ""

    def route(self, alert: Alert) -> Route | None:
        for rule in self.rules:
            if not rule.match.matches(alert):
                continue
            service = rule.service or alert.labels.get(rule.service_label or "")
            if not service:
                continue  # the label that names the service is missing: not this rule
            return Route(rule=rule.name, procedure=rule.procedure, service=service,
                         severity=rule.severity, parameters=rule.parameters)
        return None


class _LineLoader(yaml.SafeLoader):
    """Keeps the line of every mapping and sequence item, for error messages."""


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)  # a key's own line wins over its value's
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[path + (key.value,)] = key.start_mark.line + 1
            _lines(value, path + (key.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, path + (i,), out)


def load_rules(text: str, path: str, procedures: Mapping[str, Iterable[str]]) -> RuleSet:
    """Parse and check a rules file. `procedures` maps each served procedure to its
    parameter names. Raises RulesError naming the file and line."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        doc = yaml.load(text, Loader=_LineLoader) if node is not None else None  # noqa: S506 (SafeLoader)
    except yaml.YAMLError as exc:
        # the construct that was left open (context) is where a person should look first
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "line ?"
        detail = " ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p) or exc
        after = f" (noticed at line {problem.line + 1})" if problem and mark and problem.line != mark.line else ""
        raise RulesError(f"{path} {where}: not valid YAML: {detail}{after}") from exc
    if doc is None:
        return RuleSet(path=path)
    lines: dict[tuple[Any, ...], int] = {}
    _lines(node, (), lines)

    def line_of(loc: tuple[Any, ...]) -> int:
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                return lines[loc[:n]]
        return 1

    if not isinstance(doc, dict) or set(doc) - {"rules"}:
        raise RulesError(f"{path} line 1: the file holds one key, `rules`, a list of rules")
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RulesError(f"{path} line {line_of(('rules',))}: `rules` must be a list")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        where = f"{path} line {line_of(('rules', i))}"
        if not isinstance(raw, dict):
            raise RulesError(f"{where}: each rule is a mapping with name, match, procedure, service, severity")
        try:
            rule = Rule.model_validate({**raw, "line": line_of(("rules", i))})
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = tuple(err.get("loc", ()))
            field = ".".join(str(p) for p in loc) or "rule"
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                msg = "unknown key (check its spelling)"
            name = raw.get("name", f"#{i + 1}")
            raise RulesError(f"{path} line {line_of(('rules', i) + loc)}: rule {name!r}: {field}: {msg}") from exc
        if rule.name in seen:
            raise RulesError(f"{where}: rule name {rule.name!r} is already used on line {seen[rule.name]}")
        seen[rule.name] = rule.line
        if rule.procedure not in procedures:
            raise RulesError(f"{path} line {line_of(('rules', i, 'procedure'))}: rule {rule.name!r}: unknown "
                             f"procedure {rule.procedure!r}; served: {', '.join(sorted(procedures))}")
        accepted = set(procedures[rule.procedure])
        unknown = sorted(set(rule.parameters) - accepted)
        if unknown:
            raise RulesError(f"{path} line {line_of(('rules', i, 'parameters'))}: rule {rule.name!r}: "
                             f"{rule.procedure} has no parameter {', '.join(unknown)}; it takes: "
                             f"{', '.join(sorted(accepted - set(INTAKE_PARAMETERS)))}")
        rules.append(rule)
    return RuleSet(rules=rules, path=path)


EXAMPLE = """\
# sevflow intake routing rules. The first rule that matches an alert wins; an alert no rule
# matches starts nothing (it is stored, logged and counted). Restart the intake after editing.
# Each key is described at the top of sevflow/intake/rules.py.
rules: []
#  - name: checkout-down
#    match:
#      source: alertmanager
#      labels: {alertname: "Probe*", severity: critical}
#    procedure: application-rollback
#    service: checkout
#    severity: SEV-1
"""
