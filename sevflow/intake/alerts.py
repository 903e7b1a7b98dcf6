"""What alerting systems send, read into one alert model. Pure: no I/O imports.

Each sender's payload becomes a list of `Alert`s (a grouped Alertmanager or Grafana
notification holds several) or a `Control` message that carries no alert (PagerDuty's ping,
an SNS subscription confirmation). Anything else is a `PayloadError` whose message says
what is wrong, for the sender's operator to read.

Identity keys (what dedup is by) are prefixed with the source, so two senders never collide:

| source | identity | group | episode (one firing of the identity) |
|---|---|---|---|
| alertmanager, grafana | `fingerprint` (older senders: hash of the labels) | `groupKey` | `startsAt` |
| grafana legacy alerting | org and rule id | dashboard id | - |
| pagerduty | incident id | PagerDuty service id | incident id |
| datadog | `alert_cycle_key`, else `alert_id`, else `aggreg_key`, else `id` | `alert_id` | the identity |
| opsgenie | `alias`, else `alertId` | `entity` | `alertId` |
| sns | topic ARN + alarm name | topic ARN | alarm's `StateChangeTime` |
| generic | `id` | `group` | `starts_at` |
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sevflow.errors import AuthenticationFailed, PayloadError

SOURCES = ("alertmanager", "grafana", "pagerduty", "datadog", "opsgenie", "sns", "generic")
Source = Literal["alertmanager", "grafana", "pagerduty", "datadog", "opsgenie", "sns", "generic"]
Status = Literal["firing", "resolved"]


class Alert(BaseModel):
    """One alert, whatever sent it."""

    source: str
    identity: str = Field(description="dedup key: the same identity is the same alert")
    group_key: str = Field(description="alerts of one group and service belong to one incident")
    episode: str = Field(default="", description="tells one firing of an identity from a later one")
    status: Status
    opens: bool = Field(default=True, description="may start an incident (False for acks, notes, updates)")
    event: str = Field(default="", description="the sender's own name for what happened")
    service: str | None = Field(default=None, description="the service the sender names, if any")
    severity: str | None = Field(default=None, description="the sender's severity (critical, P1, high...)")
    summary: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    links: list[str] = Field(default_factory=list)
    raw: Any = Field(default=None, description="the sender's payload (or this alert's entry in it)")


class Control(BaseModel):
    """A delivery that carries no alert; the intake answers it without starting anything."""

    kind: Literal["ping", "sns-subscribe", "sns-unsubscribe", "ignored"]
    message: str
    topic_arn: str = ""
    subscribe_url: str = ""
    token: str = ""


MAX_DEPTH = 32  # no sender nests deeper than ~8; deeper is an attack or a bug
MAX_ALERTS = 500  # per delivery; Alertmanager: set `max_alerts` in the webhook_config at or below it


def decode(body: bytes) -> Any:
    """The body as JSON (400 when it is not, or nests deeper than MAX_DEPTH)."""
    if not body.strip():
        raise PayloadError("empty body: send the alert as JSON", status=400)
    _check_depth(body)
    try:
        doc = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"body is not valid JSON: {str(exc)[:200]}", status=400) from exc
    return doc


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:30]} is out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS_ONLY = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _check_depth(body: bytes) -> None:
    """Refuse deep nesting before the JSON parser sees it (it recurses per level, and a
    document it can read may still be too deep to write back). Strings are dropped first;
    then each pass of `replace` removes the innermost level: all in C, no recursion."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return
    brackets = _JSON_STRING.sub(b"", body).translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    else:
        if b"()" in brackets:  # a level left after removing MAX_DEPTH of them
            brackets = b"(" * (MAX_DEPTH + 1)
    # what is left is unbalanced (the parser will say so), unless it opens too deep first
    if b"(" * (MAX_DEPTH + 1) in brackets:
        raise PayloadError(f"the JSON nests deeper than {MAX_DEPTH} levels; no alert payload does", status=400)


def parse(source: str, doc: Any) -> list[Alert] | Control:
    """Normalise a decoded payload of `source` (the SNS envelope must be verified first)."""
    parser = _PARSERS.get(source)
    if parser is None:
        raise PayloadError(f"unknown source {source!r}; known: {', '.join(SOURCES)}", status=404)
    try:
        parsed = parser(doc)
    except PayloadError:
        raise
    except ValidationError as exc:
        raise PayloadError(f"not a {source} payload: {_first_error(exc)}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError, OSError) as exc:
        # Senders' payloads are loosely specified; any shape we cannot read is the sender's
        # to fix, and the message names what we looked for.
        raise PayloadError(f"not a {source} payload: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if isinstance(parsed, list) and len(parsed) > MAX_ALERTS:
        raise PayloadError(f"the delivery holds {len(parsed)} alerts; the limit is {MAX_ALERTS} alerts per delivery "
                           f"(Alertmanager: set `max_alerts: {MAX_ALERTS}` in the webhook_config)", status=413)
    return parsed


# --- helpers ------------------------------------------------------------------------------

_GO_ZERO = "0001-01-01T00:00:00Z"


def when(value: Any) -> datetime | None:
    """ISO-8601 (Go's nanoseconds, `Z`, `+0000`), or epoch seconds/milliseconds, as UTC."""
    if value in (None, "", _GO_ZERO):
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isascii() and value.isdigit()):
        if isinstance(value, str) and len(value) > 20:
            raise ValueError(f"not a time: {value[:30]!r}... ({len(value)} digits)")
        number = float(value)
        if number > 1e17:  # nanoseconds (Opsgenie's insertedAt)
            number /= 1e9
        elif number > 1e11:  # milliseconds
            number /= 1e3
        if not 0 <= number < 253402300800:  # 1970 .. 9999-12-31, what a datetime holds
            raise ValueError(f"not a time: {value!r} is outside 1970..9999")
        return datetime.fromtimestamp(number, tz=timezone.utc)
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    if len(value) > 64:
        raise ValueError(f"not a time: {value[:30]!r}... ({len(value)} characters)")
    text = value.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Go writes up to 9 fractional digits
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)  # +0000 -> +00:00
    parsed = datetime.fromisoformat(text)
    if parsed.year <= 1:
        return None
    return parsed.replace(tzinfo=parsed.tzinfo or timezone.utc).astimezone(timezone.utc)


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    return {str(k): "" if v is None else (v if isinstance(v, str) else json.dumps(v)) for k, v in _obj(value, what).items()}


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def _labels_hash(labels: dict[str, str]) -> str:
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg')}"


# --- Alertmanager and Grafana (same webhook shape) ----------------------------------------


def _alertmanager_like(source: str, doc: Any) -> list[Alert]:
    doc = _obj(doc, "the payload")
    if source == "grafana" and "alerts" not in doc and ("ruleId" in doc or "ruleName" in doc):
        return [_grafana_legacy(doc)]
    entries = doc.get("alerts")
    if not isinstance(entries, list) or not entries:
        raise PayloadError(f"a {source} notification has a non-empty list `alerts`")
    group = _text(doc.get("groupKey")) or _labels_hash(_strings(doc.get("groupLabels"), "groupLabels"))
    common = _strings(doc.get("commonLabels"), "commonLabels")
    out = []
    for i, entry in enumerate(entries):
        entry = _obj(entry, f"alerts[{i}]")
        labels = common | _strings(entry.get("labels"), f"alerts[{i}].labels")
        annotations = _strings(doc.get("commonAnnotations"), "commonAnnotations") | _strings(
            entry.get("annotations"), f"alerts[{i}].annotations")
        status = _text(entry.get("status") or doc.get("status")).lower()
        if status not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{i}].status must be firing or resolved, got {status!r}")
        fingerprint = _text(entry.get("fingerprint")) or _labels_hash(labels)  # older senders have none
        starts = when(entry.get("startsAt"))
        links = [_text(entry.get(k)) for k in ("generatorURL", "silenceURL", "dashboardURL", "panelURL")]
        links.append(_text(doc.get("externalURL")))
        out.append(Alert(
            source=source,
            identity=f"{source}:{fingerprint}",
            group_key=f"{source}:{group}",
            episode=starts.isoformat() if starts else "",
            status=status,  # type: ignore[arg-type]
            event=status,
            service=labels.get("service"),
            severity=labels.get("severity"),
            summary=annotations.get("summary") or annotations.get("description") or labels.get("alertname")
            or _text(doc.get("title")) or fingerprint,
            labels=labels,
            annotations=annotations,
            starts_at=starts,
            ends_at=when(entry.get("endsAt")),
            links=[link for link in links if link],
            raw=entry,
        ))
    return out


def _grafana_legacy(doc: dict[str, Any]) -> Alert:
    """Grafana's legacy (dashboard) alerting webhook, before unified alerting: one rule, no
    `alerts` list, no fingerprint; `state` is alerting / ok / no_data / paused / pending."""
    rule = _text(doc.get("ruleId")) or _text(doc.get("ruleName"))
    state = _text(doc.get("state")).lower()
    labels = _strings(doc.get("tags"), "tags")
    labels.setdefault("alertname", _text(doc.get("ruleName")) or rule)
    return Alert(
        source="grafana",
        identity=f"grafana:legacy-{doc.get('orgId', '')}-{rule}",
        group_key=f"grafana:legacy-{doc.get('dashboardId', '')}",
        episode="",
        status="resolved" if state == "ok" else "firing",
        opens=state == "alerting",
        event=state,
        service=labels.get("service"),
        severity=labels.get("severity"),
        summary=_text(doc.get("title")) or _text(doc.get("message")) or labels["alertname"],
        labels=labels,
        annotations={"message": _text(doc.get("message"))} if doc.get("message") else {},
        links=[link for link in (_text(doc.get("ruleUrl")),) if link],
        raw=doc,
    )


# --- PagerDuty (V3 webhooks; V2 `messages` from older subscriptions) ----------------------

_PD_OPENS = {"incident.triggered", "incident.reopened", "incident.trigger"}
_PD_RESOLVES = {"incident.resolved", "incident.resolve"}


def _pagerduty(doc: Any) -> list[Alert] | Control:
    doc = _obj(doc, "the payload")
    if "messages" in doc:  # V2 webhook
        messages = doc["messages"]
        if not isinstance(messages, list) or not messages:
            raise PayloadError("a PagerDuty V2 webhook has a non-empty list `messages`")
        alerts: list[Alert] = []
        for i, msg in enumerate(messages):
            msg = _obj(msg, f"messages[{i}]")
            event = _text(msg.get("event"))
            if event == "ping":
                continue
            incident = _obj(msg.get("incident"), f"messages[{i}].incident")
            alerts.append(_pd_alert(event, incident, msg, _text(msg.get("created_on"))))
        return alerts or Control(kind="ping", message="PagerDuty ping received")
    event = _obj(doc.get("event"), "event")
    event_type = _text(event.get("event_type"))
    if not event_type:
        raise PayloadError("event.event_type is missing")
    if event_type == "pagey.ping":
        return Control(kind="ping", message="PagerDuty ping received")
    data = _obj(event.get("data"), "event.data")
    incident = data if data.get("type") == "incident" else data.get("incident")
    if not isinstance(incident, dict) or not incident.get("id"):
        return Control(kind="ignored", message=f"PagerDuty {event_type} refers to no incident; nothing to do")
    return [_pd_alert(event_type, incident, event, _text(event.get("occurred_at")))]


def _pd_alert(event_type: str, incident: dict[str, Any], raw: dict[str, Any], occurred: str) -> Alert:
    incident_id = _text(incident.get("id"))
    if not incident_id:
        raise PayloadError("the incident has no id")
    service = incident.get("service") if isinstance(incident.get("service"), dict) else {}
    priority = incident.get("priority") if isinstance(incident.get("priority"), dict) else {}
    urgency = _text(incident.get("urgency"))
    labels = {k: v for k, v in {
        "event_type": event_type, "urgency": urgency, "priority": _text(priority.get("summary")),
        "incident_number": _text(incident.get("number") or incident.get("incident_number")),
        "service_id": _text(service.get("id")), "status": _text(incident.get("status")),
    }.items() if v}
    return Alert(
        source="pagerduty",
        identity=f"pagerduty:{incident_id}",
        group_key=f"pagerduty:{service.get('id') or incident_id}",
        episode=incident_id,
        status="resolved" if event_type in _PD_RESOLVES else "firing",
        opens=event_type in _PD_OPENS,
        event=event_type,
        service=_text(service.get("summary") or service.get("name")) or None,
        severity=_text(priority.get("summary")) or urgency or None,
        summary=_text(incident.get("title") or incident.get("summary")) or f"PagerDuty incident {incident_id}",
        labels=labels,
        starts_at=when(incident.get("created_at")) or when(occurred),
        links=[link for link in (_text(incident.get("html_url")),) if link],
        raw=raw,
    )


# --- Datadog (webhook integration; every value is a string) -------------------------------

_DD_TITLE = re.compile(r"^\s*\[([^\]]+)\]\s*")


def _datadog(doc: Any) -> list[Alert]:
    doc = _obj(doc, "the payload")
    identity = next((_text(doc.get(k)) for k in ("alert_cycle_key", "alert_id", "aggreg_key", "id") if doc.get(k)), "")
    if not identity:
        raise PayloadError("a Datadog webhook needs one of alert_cycle_key, alert_id, aggreg_key or id "
                           "(add $ALERT_CYCLE_KEY to the webhook's payload template)")
    title = _text(doc.get("title"))
    match = _DD_TITLE.match(title)
    transition = _text(doc.get("alert_transition")) or (match.group(1) if match else "Triggered")
    resolved = "recovered" in transition.lower()
    tags = [t.strip() for t in _text(doc.get("tags")).split(",") if t.strip()]
    labels = {k: _text(doc.get(k)) for k in ("event_type", "alert_type", "alert_priority", "alert_id",
                                              "alert_metric", "alert_scope", "hostname") if doc.get(k)}
    labels.update({t.split(":", 1)[0]: t.split(":", 1)[1] for t in tags if ":" in t})
    labels["transition"] = transition
    return [Alert(
        source="datadog",
        identity=f"datadog:{identity}",
        group_key=f"datadog:{doc.get('alert_id') or identity}",
        episode=identity,
        status="resolved" if resolved else "firing",
        opens=not resolved and transition.lower() != "no data",
        event=transition,
        service=labels.get("service"),
        severity=_text(doc.get("alert_priority") or doc.get("alert_type")) or None,
        summary=_DD_TITLE.sub("", title, count=1) or title or f"Datadog alert {identity}",
        labels=labels,
        annotations={"body": _text(doc.get("body"))} if doc.get("body") else {},
        starts_at=when(doc.get("date") or doc.get("last_updated")),
        links=[_text(doc.get(k)) for k in ("link", "url") if doc.get(k)],
        raw=doc,
    )]


# --- Opsgenie (outgoing webhook) ----------------------------------------------------------


def _opsgenie(doc: Any) -> list[Alert] | Control:
    doc = _obj(doc, "the payload")
    action = _text(doc.get("action"))
    if not action:
        raise PayloadError("an Opsgenie webhook has an `action`")
    alert = _obj(doc.get("alert"), "alert")
    key = _text(alert.get("alias") or alert.get("alertId"))
    if not key:
        raise PayloadError("the Opsgenie alert has neither alias nor alertId")
    priority = alert.get("priority")
    severity = f"P{priority}" if isinstance(priority, int) and not isinstance(priority, bool) else _text(priority) or None
    tags = alert.get("tags") if isinstance(alert.get("tags"), list) else []
    labels = {k: _text(alert.get(k)) for k in ("entity", "source", "tinyId", "alertId") if alert.get(k)}
    if tags:
        labels["tags"] = ",".join(_text(t) for t in tags)
    return [Alert(
        source="opsgenie",
        identity=f"opsgenie:{key}",
        group_key=f"opsgenie:{alert.get('entity') or key}",
        episode=_text(alert.get("alertId")),
        status="resolved" if action == "Close" else "firing",
        opens=action == "Create",
        event=action,
        service=_text((alert.get("details") or {}).get("service")) or None if isinstance(alert.get("details"), dict) else None,
        severity=severity,
        summary=_text(alert.get("message")) or key,
        labels=labels,
        annotations={"description": _text(alert.get("description"))} if alert.get("description") else {},
        starts_at=when(alert.get("createdAt")),
        raw=doc,
    )]


# --- AWS SNS (CloudWatch alarms; any other message as a plain alert) ----------------------


class SnsEnvelope(BaseModel):
    """The fields of an SNS HTTP(S) delivery that are signed or that we act on."""

    model_config = ConfigDict(extra="allow")

    Type: Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]
    MessageId: str
    TopicArn: str
    Message: str
    Timestamp: str
    SignatureVersion: str
    Signature: str
    SigningCertURL: str
    Subject: str | None = None
    SubscribeURL: str | None = None
    Token: str | None = None


def sns_envelope(doc: Any) -> SnsEnvelope:
    try:
        return SnsEnvelope.model_validate(_obj(doc, "the SNS message"))
    except ValidationError as exc:
        raise PayloadError(f"not an SNS message: {_first_error(exc)}") from exc


def _sns(doc: Any) -> list[Alert] | Control:
    env = sns_envelope(doc)
    if env.Type == "SubscriptionConfirmation":
        return Control(kind="sns-subscribe", message="SNS subscription confirmation", topic_arn=env.TopicArn,
                       subscribe_url=env.SubscribeURL or "", token=env.Token or "")
    if env.Type == "UnsubscribeConfirmation":
        return Control(kind="sns-unsubscribe", message="SNS unsubscribe confirmation: nothing to do",
                       topic_arn=env.TopicArn)
    try:  # the alarm is JSON inside a string: checked as deeply as a body
        _check_depth(env.Message.encode("utf-8", "replace"))
        message = json.loads(env.Message, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError, PayloadError):
        message = None
    if isinstance(message, dict) and message.get("AlarmName"):
        return [_cloudwatch(env, message)]
    subject = env.Subject or env.Message[:120]
    return [Alert(
        source="sns", identity=f"sns:{env.TopicArn}:{subject}", group_key=f"sns:{env.TopicArn}",
        episode=env.MessageId, status="firing", event="Notification", summary=subject,
        labels={"topic": env.TopicArn}, annotations={"message": env.Message},
        starts_at=when(env.Timestamp), raw=env.model_dump(),
    )]


def _cloudwatch(env: SnsEnvelope, alarm: dict[str, Any]) -> Alert:
    state = _text(alarm.get("NewStateValue"))
    trigger = alarm.get("Trigger") if isinstance(alarm.get("Trigger"), dict) else {}
    labels = {k: v for k, v in {
        "AlarmName": _text(alarm.get("AlarmName")), "Region": _text(alarm.get("Region")),
        "AWSAccountId": _text(alarm.get("AWSAccountId")), "NewStateValue": state,
        "OldStateValue": _text(alarm.get("OldStateValue")), "Namespace": _text(trigger.get("Namespace")),
        "MetricName": _text(trigger.get("MetricName")), "topic": env.TopicArn,
    }.items() if v}
    for dim in trigger.get("Dimensions") or []:
        if isinstance(dim, dict) and dim.get("name"):
            labels[f"dimension_{dim['name']}"] = _text(dim.get("value"))
    changed = when(alarm.get("StateChangeTime"))
    return Alert(
        source="sns",
        identity=f"sns:{env.TopicArn}:{labels['AlarmName']}",
        group_key=f"sns:{env.TopicArn}",
        episode=changed.isoformat() if changed else env.MessageId,
        status="resolved" if state == "OK" else "firing",
        opens=state == "ALARM",
        event=state,
        summary=_text(alarm.get("AlarmDescription")) or env.Subject or labels["AlarmName"],
        labels=labels,
        annotations={"reason": _text(alarm.get("NewStateReason"))} if alarm.get("NewStateReason") else {},
        starts_at=changed,
        links=[link for link in (_text(alarm.get("AlarmArn")),) if link],
        raw=env.model_dump(),
    )


# --- generic (our own documented shape) ---------------------------------------------------


class GenericAlert(BaseModel):
    """The `generic` source's alert: send one object, a list, or `{"alerts": [...]}`."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="stable identity: the same id is the same alert")
    status: Status = "firing"
    summary: str = Field(min_length=1)
    service: str | None = None
    severity: str | None = None
    group: str | None = Field(default=None, description="alerts of one group and service join one incident")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    links: list[str] = Field(default_factory=list)


def _generic(doc: Any) -> list[Alert]:
    entries = doc.get("alerts") if isinstance(doc, dict) and "alerts" in doc else doc
    entries = entries if isinstance(entries, list) else [entries]
    if not entries:
        raise PayloadError("no alerts in the payload")
    out = []
    for i, entry in enumerate(entries):
        try:
            g = GenericAlert.model_validate(entry)
        except ValidationError as exc:
            raise PayloadError(f"alerts[{i}]: {_first_error(exc)} (see the generic shape in /docs)") from exc
        starts = g.starts_at.astimezone(timezone.utc) if g.starts_at and g.starts_at.tzinfo else g.starts_at
        out.append(Alert(
            source="generic", identity=f"generic:{g.id}", group_key=f"generic:{g.group or g.id}",
            episode=starts.isoformat() if starts else "", status=g.status, event=g.status,
            service=g.service, severity=g.severity, summary=g.summary, labels=g.labels,
            annotations=g.annotations, starts_at=starts, ends_at=g.ends_at, links=g.links, raw=entry,
        ))
    return out


_PARSERS = {
    "alertmanager": lambda doc: _alertmanager_like("alertmanager", doc),
    "grafana": lambda doc: _alertmanager_like("grafana", doc),
    "pagerduty": _pagerduty,
    "datadog": _datadog,
    "opsgenie": _opsgenie,
    "sns": _sns,
    "generic": _generic,
}


# --- who a sender must be: built from its `sevflow Alert Source` block (pure, shared with the block) ---

_TOPIC_PATTERN = re.compile(r"^arn:aws(-[a-z-]+)?:sns:[a-z0-9-]+:[0-9]+:[^:]+$")


@dataclass(frozen=True)
class SourceAuth:
    """What one source must present; built from its `sevflow Alert Source` block."""

    source: str
    bearer_token: str | None = None
    basic_username: str | None = None
    basic_password: str | None = None
    signing_secrets: tuple[str, ...] = ()
    signature_header: str | None = None
    timestamp_header: str | None = None
    replay_window_seconds: float = 300.0
    allowed_topics: tuple[str, ...] = ()
    trusted_origins: tuple[str, ...] = ()
    allow_unauthenticated: bool = False
    rate_limit: float = 50.0  # alerts per second, on average
    block: str = ""

    def __repr__(self) -> str:  # never show secrets
        return f"SourceAuth({self.source!r}, bearer={'set' if self.bearer_token else 'unset'}, " \
               f"basic={'set' if self.basic_password else 'unset'}, signing_secrets={len(self.signing_secrets)})"

    @property
    def has_check(self) -> bool:
        return bool(self.bearer_token or self.basic_password or self.signing_secrets or self.source == "sns")


def check_topic_patterns(patterns: tuple[str, ...] | list[str], block: str) -> None:
    """`allowed_topics` entries are topic ARNs; a glob may stand in the topic name only, so no
    pattern admits other accounts' (let alone every) topics."""
    for pattern in patterns:
        if not _TOPIC_PATTERN.match(pattern):
            raise AuthenticationFailed(
                f"allowed_topics entry {pattern!r} in block {block} is not a topic ARN "
                "(arn:aws:sns:<region>:<account id>:<topic>, a glob only inside the topic name); "
                "a pattern that admits every topic is refused")
