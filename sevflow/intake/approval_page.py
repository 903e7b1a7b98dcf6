"""The approval page: where a one-click approval link (sevflow.links) lands.

    GET  /approve/{run}/{link}/{token}   the plan, its digest, who has answered; approve/reject form
    POST /approve/{run}/{link}/{token}   answer (form fields `decision`, `reason`), once

Plain HTML, no script, readable on a phone; every text shown is escaped. The page answers the
gate through the same resume call as the CLI, as the link's approver, with the link's id and
proof (a hash of the token). The flow judges it (it checks the link against its MAC-protected
record); the page refuses early, with a page saying why, a link that is altered, used, expired,
or for a gate no longer waiting, and then changes nothing. The token is never logged or stored.
"""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from sevflow import links
from sevflow.models import RECORD_PREFIX, GateRequest, gate_request_key, utcnow

_LINK_ID = re.compile(r"^[0-9a-f]{16}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"}
MAX_REASON = 2000


class Refused(Exception):
    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(title)
        self.status, self.title, self.text = status, title, text


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · sevflow</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 42rem; margin: 1rem auto; padding: 0 1rem; line-height: 1.4; }}
pre {{ background: #f4f4f4; padding: .5rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }}
code {{ word-break: break-all; }}
fieldset {{ border: 1px solid #ccc; margin: 1rem 0; }}
label {{ display: block; margin: .4rem 0; }}
textarea {{ width: 100%; min-height: 5rem; font: inherit; box-sizing: border-box; }}
button {{ font-size: 1.1rem; padding: .6rem 1.2rem; margin-top: .5rem; }}
.refused {{ border-left: 4px solid #b00; padding-left: .8rem; }}
</style></head>
<body>
<h1>{_e(title)}</h1>
{body}
</body></html>"""
    return HTMLResponse(doc, status_code=status, headers=_HEADERS)


def _refusal(exc: Refused) -> HTMLResponse:
    return _page(exc.title, f'<p class="refused" role="alert">{_e(exc.text)}</p>'
                 "<p>Nothing was changed. Answer with <code>sevflow approve|reject RUN --as NAME --reason TEXT</code>"
                 " or in the Prefect UI, or ask for a new link.</p>", exc.status)


# --- checks (blocking Prefect calls: run in a thread) ------------------------------------------


def _check(run_id: str, link_id: str, token: str) -> tuple[links.LinkRecord, GateRequest]:
    from prefect.client.orchestration import get_client

    from sevflow.gate import gate_of_pause_key
    from sevflow.tasks.orchestrator import read_record

    invalid = Refused(403, "This approval link is not valid",
                      "The link does not match any approval link sevflow sent: it may be mistyped, cut short "
                      "or altered. Open it again from the notification exactly as it was sent.")
    try:
        UUID(run_id)
    except ValueError:
        raise invalid from None
    if not _LINK_ID.match(link_id) or not _TOKEN.match(token):
        raise invalid
    stored = read_record(run_id, links.record_key(link_id))
    if not isinstance(stored, dict):
        raise invalid
    record = links.LinkRecord.model_validate(stored)
    if record.run != run_id or not links.token_matches(record, token):
        raise invalid
    if read_record(run_id, links.used_key(link_id)) is not None:
        raise Refused(410, "This approval link was already used",
                      f"{record.approver} already answered through this link; a link is good for one answer.")
    if utcnow() > record.expires_at:
        raise Refused(410, "This approval link expired",
                      f"The link expired at {record.expires_at:%Y-%m-%d %H:%M:%S} UTC.")
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    state = run.state
    if state is None or state.type.value != "PAUSED" or gate_of_pause_key(state.state_details.pause_key) != record.gate:
        raise Refused(409, "This gate is no longer waiting",
                      f"The run is {state.name if state else 'in no state'}: gate {record.gate!r} has been answered "
                      "or closed.")
    request = GateRequest.model_validate(read_record(run_id, gate_request_key(record.gate)))
    if request.digest != record.plan_digest:
        raise invalid
    return record, request


def _answers(run_id: str, gate: str) -> list[dict[str, Any]]:
    from sevflow.tasks.orchestrator import read_records

    found = read_records(run_id, f"{RECORD_PREFIX}{gate}-")
    return [found[k] for k in sorted(found) if re.fullmatch(rf"{re.escape(RECORD_PREFIX + gate)}-\d+-answer", k)]


def _answer(run_id: str, link_id: str, token: str, decision: str, reason: str) -> str:
    """Claim the link (once), answer the gate; returns the gate's sentence on it, if given soon."""
    import time

    from prefect.client.orchestration import get_client

    from sevflow.gate import post_answer
    from sevflow.tasks.orchestrator import read_record, write_record

    record, request = _check(run_id, link_id, token)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    pause_key = str(run.state.state_details.pause_key)
    if not write_record(run_id, links.used_key(link_id), {"at": utcnow().isoformat(), "decision": decision}):
        raise Refused(410, "This approval link was already used",
                      f"{record.approver} already answered through this link; a link is good for one answer.")
    run_input = {"decision": decision, "approver": record.approver, "reason": reason,
                 "plan_digest": record.plan_digest, "link_id": link_id, "link_proof": links.proof_of(token)}
    with get_client(sync_client=True) as client:
        body = post_answer(client, run, run_input)
    if body.get("status") != "ACCEPT":
        details = body.get("details") or {}
        raise Refused(409, "The run did not take the answer",
                      f"The server refused it ({body.get('status')}: {details.get('reason', '')}). The link is used up.")
    n = int(pause_key.rsplit("-", 1)[1])
    key = f"{RECORD_PREFIX}{record.gate}-{n:02d}-answer"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        entry = read_record(run_id, key)
        if entry:
            return str(entry.get("description", ""))
        time.sleep(0.5)
    return ""


# --- rendering -----------------------------------------------------------------------------


def _plan_page(record: links.LinkRecord, request: GateRequest, answers: list[dict[str, Any]], error: str = "",
               reason: str = "") -> HTMLResponse:
    plan, incident = request.plan, request.incident
    rows = "".join(
        f"<li>{_e(a.get('actor') or '?')}: {_e(a.get('details', {}).get('decision', ''))} → {_e(a.get('description', ''))}</li>"
        for a in answers) or "<li>No answers yet.</li>"
    commands = "\n".join(plan.command_lines())
    body = f"""
<p><strong>Incident {_e(incident.incident_id)}</strong> · {_e(incident.severity.value)} · service
<code>{_e(incident.service)}</code> · procedure <code>{_e(incident.procedure)}</code></p>
<h2>{_e(plan.title)}</h2>
<p><strong>Where:</strong> {_e(plan.target)}</p>
<p><strong>What will run:</strong></p>
<pre>{_e(commands)}</pre>
<p><strong>How to undo:</strong> {_e(plan.undo)}</p>
<p><strong>Plan digest:</strong> <code data-testid="digest">{_e(request.digest)}</code></p>
<p><strong>Requested by:</strong> {_e(request.requester)} · <strong>Approvals needed:</strong>
{request.required_approvals} distinct, of {_e(', '.join(request.approvers))}</p>
<h3>Answers so far</h3>
<ul>{rows}</ul>
{f'<p class="refused" role="alert">{_e(error)}</p>' if error else ''}
<form method="post">
<fieldset><legend>Your answer, as <strong>{_e(record.approver)}</strong></legend>
<label><input type="radio" name="decision" value="approve" required> Approve: make the change above</label>
<label><input type="radio" name="decision" value="reject"> Reject: leave production as it is</label>
<label for="reason">Reason (recorded in the timeline and post-mortem)</label>
<textarea id="reason" name="reason" required maxlength="{MAX_REASON}">{_e(reason)}</textarea>
<button type="submit">Send answer</button>
</fieldset></form>
<p><small>This link is yours alone, good for one answer until {record.expires_at:%Y-%m-%d %H:%M} UTC.</small></p>"""
    return _page(f"Approval needed: {plan.title}", body)


def add_routes(app: FastAPI) -> None:
    path = "/approve/{run_id}/{link_id}/{token}"

    @app.get(path, response_class=HTMLResponse, include_in_schema=False)
    async def approval_page(run_id: str, link_id: str, token: str) -> HTMLResponse:
        try:
            record, request = await asyncio.to_thread(_check, run_id, link_id, token)
            answers = await asyncio.to_thread(_answers, run_id, record.gate)
        except Refused as exc:
            return _refusal(exc)
        return _plan_page(record, request, answers)

    @app.post(path, response_class=HTMLResponse, include_in_schema=False)
    async def approval_answer(request: Request, run_id: str, link_id: str, token: str) -> HTMLResponse:
        raw = await request.body()
        if len(raw) > 16 * 1024:
            return _refusal(Refused(413, "Answer too long", "The answer is over 16 KiB."))
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", errors="replace")).items()}
        decision, reason = form.get("decision", ""), form.get("reason", "").strip()
        problem = ("Choose approve or reject." if decision not in ("approve", "reject")
                   else "Give a reason: it is recorded in the timeline." if not reason
                   else f"The reason is over {MAX_REASON} characters." if len(reason) > MAX_REASON else "")
        try:
            if problem:
                record, gate_request = await asyncio.to_thread(_check, run_id, link_id, token)
                answers = await asyncio.to_thread(_answers, run_id, record.gate)
                page = _plan_page(record, gate_request, answers, error=problem, reason=reason)
                page.status_code = 400
                return page
            sentence = await asyncio.to_thread(_answer, run_id, link_id, token, decision, reason)
        except Refused as exc:
            return _refusal(exc)
        return _page("Answer recorded" if sentence else "Answer delivered",
                     f'<p role="status">{_e(sentence) if sentence else "The run has your answer; it has not judged it yet. See the run in Prefect."}</p>'
                     f"<p>You answered <strong>{_e(decision)}</strong>: {_e(reason)}</p>")


__all__ = ["add_routes", "Refused"]
