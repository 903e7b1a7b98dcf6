"""`sevflow up --demo`, as a newcomer meets it: start sevflow with the demo flag, open the
link it prints in a real browser, start the demo's rollback from the Run form, approve it in
the Resume form as yourself, and watch the demo app's health turn green. Nothing of it is
written outside sevflow's state folder.

Its own `sevflow up` (SQLite server, worker, demo app) on free ports, not the session stack.
Waits are on the API and the app, never on the clock.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.support.stack import free_port
from tests.support.wait import until
from tests.ui.test_resume_form import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, ClassicUI, expect, playwright_api

pytestmark = pytest.mark.ui


class UpDemo:
    """`sevflow up --demo` with HOME, SEVFLOW_HOME and the working directory all in `root`."""

    def __init__(self, root: Path) -> None:
        self.home, self.cwd = root / "home", root / "cwd"
        self.state = self.home / "sevflow-state"
        self.home.mkdir()
        self.cwd.mkdir()
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GIT_"))}
        env |= {"HOME": str(self.home), "SEVFLOW_HOME": str(self.state), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "COLUMNS": "80"}
        self.marker = f"SEVFLOW_HOME={self.state}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sevflow", "up", "--demo", "--port", str(self.port), "--intake-port", "0",
             "--escalation-interval", "0"],
            env=env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def printed(self, pattern: str) -> re.Match[str] | None:
        assert self.process.poll() is None, "".join(self.lines)
        return next((m for m in (re.search(pattern, line) for line in self.lines) if m), None)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for proc in Path("/proc").iterdir():  # leave nothing running for the next tests
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and self.marker.encode() in (proc / "environ").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture
def up_demo(tmp_path: Path) -> Iterator[UpDemo]:
    up = UpDemo(tmp_path)
    try:
        yield up
    finally:
        up.stop()


def _run(api: str, run_id: str) -> dict[str, Any]:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()


def _runs_of(api: str, deployment_id: str) -> list[dict[str, Any]]:
    return httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}},
                      timeout=10).json()


def _health(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def close_toasts(page: Any) -> None:
    """Close the UI's error toasts ("Oops. Something went wrong.") so they cover no button."""
    for close in page.locator(".p-toast-container").get_by_role("button", name="Close").all():
        with contextlib.suppress(Exception):
            close.click(timeout=2_000)


def test_demo_rollback_started_and_approved_in_the_ui_turns_health_green(up_demo: UpDemo, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium, or run with -m 'not ui'")
    link = until(lambda: up_demo.printed(r"or in the UI: (http://\S+/run)\b"), 420, 0.3,
                 what="sevflow up --demo to print the demo's Run link")[1]
    command = up_demo.printed(r"(sevflow run application-rollback --param service=demo-shop)")
    health_url = up_demo.printed(r"health check (http://127\.0\.0\.1:\d+/health) answers 500")
    assert command and health_url, "".join(up_demo.lines)
    health_url = health_url[1]
    until(lambda: _health(health_url) == 500, 60, 0.2, what="the demo app to serve its broken release")
    ui = ClassicUI()
    me = getpass.getuser()

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        errors: list[str] = []  # what the server answered the browser with an error, for failure messages
        page.on("response", lambda r: errors.append(f"{r.request.method} {r.url} -> {r.status}")
                if r.status >= 500 or r.status in (401, 403) else None)
        page.on("requestfailed", lambda r: errors.append(f"{r.method} {r.url} failed: {r.failure}"))
        try:
            # The Run form the printed link opens: name the service, say why, submit.
            page.goto(link)
            expect(page.get_by_text("Rollback: Application").first).to_be_visible()
            form = page.locator(".schema-form-property")
            service = form.filter(has=page.locator(".schema-form-property__label", has_text=re.compile("^service$")))
            # A loaded machine may still be drawing the form: wait for both fields, fill them, and
            # check they hold what was typed right before submitting.
            service_box = service.locator("textarea")
            reason = form.filter(has=page.locator(".schema-form-property__label", has_text=re.compile("^reason")))
            reason_box = reason.locator("textarea")
            for box, text in ((service_box, "demo-shop"), (reason_box, "checkout page broken since release 2")):
                expect(box).to_be_editable()
                box.fill(text)
            expect(service_box).to_have_value("demo-shop")
            expect(reason_box).to_have_value("checkout page broken since release 2")
            page.screenshot(path=str(tmp_path / "1-run-form.png"), full_page=True)
            # The UI leaves the form for the run's page once the server took the run. The demo's
            # server is SQLite, which under a loaded machine answers some writes 503 ("database is
            # locked"); Prefect's client retries those, the UI shows "Oops. Something went wrong."
            # and keeps the form (CI saw it). As a person would: close the toast, submit again,
            # but only while no run exists, so a slow page never makes a second run.
            deployment_id = re.search(r"/deployments/deployment/([0-9a-f-]{36})/run", link)[1]  # type: ignore[index]
            for attempt in range(3):
                page.get_by_role("button", name="Submit", exact=True).click()
                try:
                    expect(page).not_to_have_url(re.compile(r"/run$"), timeout=60_000)
                    break
                except AssertionError as e:
                    if _runs_of(up_demo.api, deployment_id):
                        break  # the server took it; the page is slow to move on
                    if attempt == 2:
                        raise AssertionError(f"the Run form was not sent; server errors: {errors}; "
                                             f"it shows: {page.inner_text('body')[:2000]}") from e
                    close_toasts(page)
            runs = until(lambda: _runs_of(up_demo.api, deployment_id), 120, 0.3, what="the run the form created")
            assert len(runs) == 1, runs
            run_id = runs[0]["id"]
            assert runs[0]["parameters"]["service"] == "demo-shop"
            page.goto(link.rsplit("/deployments/", 1)[0] + f"/runs/flow-run/{run_id}")

            # It plans, then waits at its gate for approval: the API says so.
            paused = until(lambda: _run(up_demo.api, run_id)["state_type"] == "PAUSED"
                           or _run(up_demo.api, run_id)["state"]["type"] in {"FAILED", "CRASHED", "COMPLETED"},
                           180, 0.3, what="the demo rollback to reach its gate")
            state = _run(up_demo.api, run_id)["state"]
            assert paused and state["type"] == "PAUSED", state
            assert _health(health_url) == 500  # nothing changed while the gate waits

            # Approve as yourself (the demo policy lets the current user approve).
            page.reload()
            expect(page.get_by_text("Paused").first).to_be_visible()
            dialog = ui.open_resume(page)
            expect(dialog.get_by_role("heading", name=re.compile("Roll back demo-shop to .*Release 1"))).to_be_visible()
            expect(dialog).to_contain_text(f"Who may answer: {me}")
            ui.open_decision(dialog)
            page.get_by_role("option").filter(has_text=re.compile("^approve$")).click()
            ui.text_field(dialog, "Your name").fill(me)
            ui.text_field(dialog, "Reason").fill("release 1 was healthy")
            expect(ui.decision_shown(dialog)).to_have_text(re.compile(r"^\s*approve\s*$"))
            expect(ui.text_field(dialog, "Your name")).to_have_value(me)
            page.screenshot(path=str(tmp_path / "2-resume-form.png"), full_page=True)
            # The form closes once the server took the answer. On a loaded machine a click can go
            # unanswered (CI saw the form stay open, the run still waiting at its first answer):
            # as a person would, click Submit again while the run still waits for that answer.
            for attempt in range(3):
                dialog.get_by_role("button", name=ui.submit, exact=True).click()
                try:
                    expect(dialog).to_be_hidden(timeout=30_000)
                    break
                except AssertionError as e:
                    state = _run(up_demo.api, run_id)["state"]
                    waiting = state["type"] == "PAUSED" and state["state_details"]["pause_key"] == "rollback-answer-1"
                    if attempt == 2 or not waiting:
                        raise AssertionError(f"the Resume form was not sent; it shows: {dialog.inner_text()[:2000]}; "
                                             f"run: {state}; server errors: {errors}") from e
                    close_toasts(page)

            until(lambda: _run(up_demo.api, run_id)["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"},
                  180, 0.3, what="the demo rollback to finish")
            final = _run(up_demo.api, run_id)["state"]
            page.reload()
            expect(page.get_by_text("Completed").first).to_be_visible()
            page.screenshot(path=str(tmp_path / "3-run-completed.png"), full_page=True)
        except BaseException:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    assert final["type"] == "COMPLETED", final
    assert _health(health_url) == 200  # green: release 1 is deployed again
    assert "release 1: healthy" in httpx.get(health_url, timeout=5).text

    # The demo's repository has the rollback as a new commit; nothing outside the state folder.
    demo = up_demo.state / "demo" / "shop"
    log = subprocess.run(["git", "log", "--format=%s", "main"], cwd=demo, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "GIT_CONFIG_GLOBAL": "/dev/null"}).stdout.split("\n")
    assert log[0].startswith("Roll back demo-shop to") and log[1] == "Release 2: new checkout page", log
    assert sorted(p.name for p in up_demo.home.iterdir()) == ["sevflow-state"]
    assert list(up_demo.cwd.iterdir()) == []
