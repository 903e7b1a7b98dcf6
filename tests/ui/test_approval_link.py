"""One-click approval links, in a real browser (Debian's chromium driven by Playwright).

A real Prefect server and worker, a real `sevflow intake` serving the approval page, a real
local webhook receiver playing each approver's channel. The policy needs verified answers
(SEV-1, keys listed), so a typed answer does not count; the link is the proof.

What it proves:
- each approver the tier names gets a notification with a link of their own;
- a link with one character changed is refused with a page saying so, and nothing changes;
- an expired link is refused;
- the right link shows the plan, its digest and the answers so far; approving completes the run,
  recorded as alice's answer, proven by her link;
- the same link a second time is refused;
- a forged answer written straight into the run with a link id and a made-up proof is ignored,
  and so is one through a link record the attacker wrote themselves (no valid MAC);
- no link token appears in any log, artifact, event, record or stored result.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import Service, start, wait_final, wait_paused
from tests.flows.test_identity import make_key
from tests.flows.test_plans import _request, records, resume_with, world
from tests.flows.test_secrets import _all, _all_events
from tests.support.stack import Intake, PrefectServer
from tests.support.wait import until
from tests.ui.test_resume_form import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, off_loop, screenshot_on_failure

import playwright.sync_api as playwright_api  # a test extra: missing, the suite fails (never skips silently)
expect = playwright_api.expect

pytestmark = pytest.mark.ui

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/approve/([0-9a-f-]{36})/([0-9a-f]{16})/([A-Za-z0-9_-]+))")


@pytest.fixture(scope="module")
def approval_intake(stack: PrefectServer, worker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    process = Intake(stack.env(), tmp_path_factory.mktemp("approval-intake"), "rules: []\n")
    process.start(wait=False)
    process.wait_ready(credentials=False)
    yield process
    process.stop()


def save_link_policy(service: Service, intake: Intake, keys: dict[str, Path], link_seconds: float) -> None:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule, EscalationTier

    ApprovalPolicy(
        rules=[ApprovalRule(change_kind="*", approvers=["alice", "bob"])],
        escalation={"*": [EscalationTier(name="primary", notify=["alice", "bob"], wait_seconds=3600,
                                         notification_block=service._webhook_block())]},
        approver_keys={name: Path(f"{key}.pub").read_text() for name, key in keys.items()},
        approval_page_url=intake.url,
        approval_link_seconds=link_seconds,
    ).save(service.policy, overwrite=True)


def links_for(service: Service, run_id: str) -> dict[str, str]:
    """The link each approver was sent for `run_id`, from the notifications received."""
    found: dict[str, str] = {}
    for message in service.receiver.received:
        body = message["body"].get("body", "")
        who = re.search(r"^For (\w+): your own approval link", body, re.M)
        link = LINK.search(body)
        if who and link and link.group(2) == run_id:
            found[who.group(1)] = link.group(1)
    return found


def one_character_changed(link: str) -> str:
    last = link[-1]
    return link[:-1] + ("A" if last != "A" else "B")


def test_approval_link_approves_once_and_refuses_altered_expired_and_reused_links(
        service: Service, worker: Any, stack: PrefectServer, approval_intake: Intake, tmp_path: Path) -> None:
    keys = {name: make_key(tmp_path, name) for name in ("alice", "bob")}
    # Run A: links that expire at once. Run B: links good for an hour.
    save_link_policy(service, approval_intake, keys, link_seconds=0.5)
    run_a = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-1")
    wait_paused(run_a)
    links_a = until(lambda: (lambda f: f if len(f) == 2 else None)(links_for(service, run_a)),
                    what="run A's two approval links")
    save_link_policy(service, approval_intake, keys, link_seconds=3600)
    run_b = start("application-rollback", service=service.name, policy=service.policy, severity="SEV-1")
    wait_paused(run_b)
    links_b = until(lambda: (lambda f: f if len(f) == 2 else None)(links_for(service, run_b)),
                    what="run B's two approval links")
    assert links_b["alice"] != links_b["bob"]  # each approver's own
    request_b = _request(run_b, "rollback")
    assert request_b["verified"] is True  # a typed (UI) answer would not count here
    before = world(service)

    # A forged answer: run A's link id with a made-up proof, written straight into the run.
    link_id_a = LINK.search(links_a["alice"]).group(3)
    assert resume_with(run_a, decision="approve", approver="alice", reason="forged",
                       plan_digest=_request(run_a, "rollback")["digest"], link_id=link_id_a,
                       link_proof="0" * 64)["status"] == "ACCEPT"
    wait_paused(run_a, gate_answer=2)
    forged = records(run_a)["sevflow-record-rollback-01-answer"]
    assert forged["details"]["verdict"] == "ignored"
    assert "does not carry the approval link's proof" in forged["description"]
    assert world(service) == before
    # A forged link record (the attacker's own token hash, no valid MAC) and an answer through it.
    from sevflow import links
    from sevflow.models import utcnow
    from sevflow.tasks.orchestrator import write_record

    request_a = _request(run_a, "rollback")
    fake = links.LinkRecord(link_id="f" * 16, run=run_a, gate="rollback", plan_digest=request_a["digest"],
                            approver="alice", expires_at=links.expiry(utcnow(), 3600),
                            proof_hash=__import__("hashlib").sha256(links.proof_of("attacker").encode()).hexdigest(),
                            mac="0" * 64)
    assert write_record(run_a, links.record_key(fake.link_id), fake.model_dump(mode="json"))
    assert resume_with(run_a, decision="approve", approver="alice", reason="forged link",
                       plan_digest=request_a["digest"], link_id=fake.link_id,
                       link_proof=links.proof_of("attacker"))["status"] == "ACCEPT"
    wait_paused(run_a, gate_answer=3)
    forged = records(run_a)["sevflow-record-rollback-02-answer"]
    assert forged["details"]["verdict"] == "ignored"
    assert "not issued by sevflow" in forged["description"], forged["description"]
    assert world(service) == before
    assert "approval links sent to alice, bob" in records(run_b)["sevflow-record-rollback-escalation-0"]["description"]

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium, or run with -m 'not ui'")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # A phone-sized window: the page must work there.
            context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            with screenshot_on_failure(page, tmp_path / "approval-link-failure.png"):
                # One character changed: refused, nothing changes.
                response = page.goto(one_character_changed(links_b["alice"]))
                assert response.status == 403
                expect(page.get_by_role("heading")).to_have_text("This approval link is not valid")
                expect(page.get_by_text("Nothing was changed.")).to_be_visible()
                expect(page.locator("form")).to_have_count(0)
                assert off_loop(wait_paused, run_b, gate_answer=1)

                # Run A's link has expired (0.5 s after it was sent).
                response = page.goto(links_a["bob"])
                assert response.status == 410
                expect(page.get_by_role("heading")).to_have_text("This approval link expired")

                # An answer without a reason or a decision: refused, the link still good, nothing changes.
                for form in ({"decision": "approve"}, {"reason": "no decision"}, {"decision": "maybe", "reason": "x"}):
                    refused = httpx.post(links_b["alice"], data=form, timeout=30)
                    assert refused.status_code == 400, (form, refused.text)
                    assert "Choose approve or reject." in refused.text or "Give a reason" in refused.text
                assert off_loop(wait_paused, run_b, gate_answer=1)

                # Alice's own link: the plan, its digest, the answers so far; she approves.
                page.goto(links_b["alice"])
                expect(page.get_by_role("heading", level=2)).to_contain_text(f"Roll back {service.name}")
                expect(page.get_by_test_id("digest")).to_have_text(request_b["digest"])
                expect(page.get_by_text("No answers yet.")).to_be_visible()
                expect(page.get_by_text("as alice")).to_be_visible()
                page.get_by_label("Approve: make the change above").check()
                page.get_by_label("Reason").fill("v2 was healthy <b>checked</b>")
                page.get_by_role("button", name="Send answer").click()
                # The page shows the gate's verdict, or (on a slow worker) that the run has the answer.
                expect(page.get_by_role("status")).to_contain_text(
                    re.compile("Approved by alice|has not judged it yet"), timeout=30_000)

                final = off_loop(wait_final, run_b)
                assert final.state.type.value == "COMPLETED", final.state.message
                assert service.app.deployed() == "version 2 healthy"
                answer = off_loop(records, run_b)["sevflow-record-rollback-01-answer"]
                assert answer["actor"] == "alice"
                assert answer["details"]["proof"] == "link"
                assert answer["details"]["identity"] == "proven by alice's own approval link"
                assert answer["details"]["reason"] == "v2 was healthy <b>checked</b>"

                # The same link again: refused.
                response = page.goto(links_b["alice"])
                assert response.status == 410
                expect(page.get_by_role("heading")).to_have_text("This approval link was already used")
                # Bob's link, for a gate no longer waiting: refused too.
                response = page.goto(links_b["bob"])
                assert response.status == 409
        finally:
            browser.close()

    # Run A is still waiting, unchanged; its expired links changed nothing.
    assert off_loop(wait_paused, run_a, gate_answer=3)

    tokens = [LINK.search(link).group(4) for link in (*links_a.values(), *links_b.values())]
    from prefect.client.orchestration import get_client

    def everything() -> str:
        with get_client(sync_client=True) as client:
            logs = _all(client, "/logs/filter")
            artifacts = _all(client, "/artifacts/filter")
            runs = _all(client, "/flow_runs/filter")
            task_runs = _all(client, "/task_runs/filter")
            events = _all_events(client)
            inputs = [client.request("POST", f"/flow_runs/{r['id']}/input/filter",
                                     json={"prefix": "", "limit": 200}).json() for r in runs]
        results = [p.read_bytes().decode("latin-1") for p in (stack.home / "storage").rglob("*") if p.is_file()]
        files = [p.read_text(errors="replace") for p in (stack.home / "worker.log", stack.home / "server.log",
                                                         approval_intake.log_path)]
        return json.dumps([logs, artifacts, runs, task_runs, events, inputs, results, files])

    haystack = off_loop(everything)
    assert "proven by alice's own approval link" in haystack  # the search does see the records
    for token in tokens:
        assert token not in haystack
    key_file = Path(worker.env["SEVFLOW_HOME"]) / "approval-links.key"  # made by the worker that sent the links
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.read_text().strip() not in haystack
    assert httpx.get(f"{approval_intake.url}/openapi.json", timeout=5).json()["paths"].get("/approve/{run_id}/{link_id}/{token}") is None
