"""Prefect itself as the system of record: run tags, durable records, events, artifacts.

Durable records are flow run inputs under keys `sevflow-record-...` (JSON timeline entries).
They live as long as the run (events are kept only 7 days by default) and a key can be
written only once, which is what makes each record, and each escalation, exactly-once.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError
from prefect.logging import get_logger

from sevflow.models import RECORD_PREFIX, IncidentContext, TimelineEntry

__all__ = ["RECORD_PREFIX", "write_record", "read_record", "read_records", "record_timeline", "emit_incident_event"]

log = get_logger("sevflow.records")


def run_url(flow_run_id: str | UUID) -> str | None:
    """The run's page in the Prefect UI, when the UI's address is known."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def write_record(flow_run_id: str | UUID, key: str, value: dict[str, Any] | str) -> bool:
    """Store `value` under `key` on the run, once. Returns False if the key already existed
    (someone recorded it before: a replay, or a second watcher)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    with get_client(sync_client=True) as client:
        try:
            client.create_flow_run_input(flow_run_id=UUID(str(flow_run_id)), key=key, value=text)
        except ObjectAlreadyExists:
            return False
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 409:
                return False
            raise
    return True


def read_record(flow_run_id: str | UUID, key: str) -> Any | None:
    with get_client(sync_client=True) as client:
        try:
            text = client.read_flow_run_input(flow_run_id=UUID(str(flow_run_id)), key=key)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
    if text is None:
        return None
    return json.loads(text) if isinstance(text, str) else text


def read_records(flow_run_id: str | UUID, prefix: str = RECORD_PREFIX) -> dict[str, Any]:
    """Every record on the run whose key starts with `prefix`, by key."""
    out: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while True:  # the API pages by "keys not yet read" (an alert storm can leave thousands)
            found = client.filter_flow_run_input(
                flow_run_id=UUID(str(flow_run_id)), key_prefix=prefix, limit=200, exclude_keys=set(out)
            )
            out.update({item.key: item.decoded_value for item in found})
            if len(found) < 200:
                return out


def record_timeline(incident: IncidentContext, key: str, entry: TimelineEntry) -> bool:
    """A line of the incident's timeline, stored durably on the run (once per key)."""
    return write_record(incident.flow_run_id, f"{RECORD_PREFIX}{key}", entry.model_dump(mode="json"))


def timeline_records(flow_run_id: str | UUID) -> list[TimelineEntry]:
    records = read_records(flow_run_id)
    return [TimelineEntry.model_validate(v) for k, v in sorted(records.items()) if isinstance(v, dict)]


def emit_incident_event(
    incident: IncidentContext,
    event: str,
    payload: dict[str, Any] | None = None,
    occurred: datetime | None = None,
) -> None:
    """A Prefect event on the resource `sevflow.incident.<id>`, related to the run, so
    automations can react and the event feed shows the incident's history."""
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": incident.resource_id,
            "prefect.resource.name": f"{incident.incident_id} ({incident.service}, {incident.severity.value})",
            "sevflow.severity": incident.severity.value,
            "sevflow.service": incident.service,
        },
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{incident.flow_run_id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": incident.flow_run_name or incident.flow_run_id,
            }
        ],
        payload=payload or {},
        occurred=occurred,
    )


def add_run_tags(flow_run_id: str | UUID, tags: list[str]) -> list[str]:
    """Add tags to the run (keeping the ones it has); returns the run's tags."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(flow_run_id)))
        merged = sorted(set(run.tags) | set(tags))
        if merged != sorted(run.tags):
            client.update_flow_run(UUID(str(flow_run_id)), tags=merged)
    return merged


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def incident_alerts(flow_run_id: str | UUID) -> list[TimelineEntry]:
    """The alerts the intake delivered to the run (`sevflow-record-alert-*`), oldest first."""
    records = read_records(flow_run_id, f"{RECORD_PREFIX}alert-")
    entries = [TimelineEntry.model_validate(v) for v in records.values() if isinstance(v, dict)]
    return sorted(entries, key=lambda e: e.at)


def resolved_alerts(flow_run_id: str | UUID) -> list[TimelineEntry]:
    """Alerts of the run that say the incident's alert resolved."""
    return [e for e in incident_alerts(flow_run_id) if e.description.startswith("Alert resolved")]
