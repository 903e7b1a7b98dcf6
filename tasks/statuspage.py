"""Telling stakeholders and the status page (runbook, Production System Down: "Alert
stakeholders immediately", "Post status update", and again when resolved).

Stakeholders are told through Prefect notification blocks named in the outage profile; the
status page is a webhook that takes JSON. A channel that fails does not stop the procedure
(the outage still needs fixing): the failure is returned, logged and put on the timeline,
without the exception's text (it can hold a webhook URL and its token).
"""

from __future__ import annotations

import logging

import httpx
from prefect.exceptions import MissingContextError
from prefect.logging.loggers import get_logger, get_run_logger
from pydantic import BaseModel, Field

from sevflow.blocks.outage import OutageProfile
from sevflow.models import OutageSpec
from sevflow.outage import StatusUpdate
from sevflow.tasks import notify
from sevflow.tasks.common import step

TIMEOUT_SECONDS = 10.0


class Communicated(BaseModel):
    """Who was told what; `failed` names the channels that could not be reached."""

    state: str
    told: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sevflow.tasks.statuspage")


@step("COMMUNICATE", mutating=True)
def communicate(profile: OutageSpec, update: StatusUpdate, run_key: str) -> Communicated:
    """Send `update` to every notification block of the profile and POST it to the status
    page. Persisted per run and update, so a replay sends nothing again; never retried."""
    done = Communicated(state=update.state)
    body = "\n".join([update.subject, "", update.message])
    for slug in profile.notification_blocks:
        try:
            notify.send(slug, update.subject, body)
            done.told.append(slug)
        except Exception as exc:  # noqa: BLE001 - one dead channel must not silence the others
            done.failed.append(f"{slug}: {notify.failure_summary(exc)}")
    if profile.status_page_webhook:
        headers = {"Idempotency-Key": f"{run_key}-{update.state}"}
        if profile.status_page_token:
            headers |= OutageProfile.for_service(profile.block).status_page_headers()
        try:
            response = httpx.post(profile.status_page_webhook, json=update.model_dump(mode="json"),
                                  headers=headers, timeout=TIMEOUT_SECONDS)
            response.raise_for_status()
            done.told.append("status page")
        except httpx.HTTPError as exc:
            done.failed.append(f"status page: {notify.failure_summary(exc)}")
    log = _logger()
    log.info("Told %s: %s", ", ".join(done.told) or "nobody (no channel configured)", update.subject)
    for failure in done.failed:
        log.error("Could not tell %s", failure)
    return done
