"""The approval gate as an approver meets it: the Resume form in the Prefect UI, in a real
browser (Debian's chromium driven by Playwright), against the session's real server and worker.

Prefect 3.9 serves two UIs from the same server: the classic one ("v1", at /) and the new one
("v2", at /v2; the default for browsers without a saved preference). Both are covered.

What each test proves, for one paused application-rollback run:
- the form shows the proposed change, rendered from the gate's description markdown;
- `decision` is an explicit choice: nothing is preselected, it is not a toggle, and only
  approve and reject are offered;
- submitting with name and reason but no decision does not resume the run (it stays Paused
  at its first answer);
- choosing approve, typing "alice" and a reason and submitting resumes it: the run completes
  and the service's app is deployed on version 2 and healthy.
"""

from __future__ import annotations

import contextvars
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx
import pytest

from sevflow.gate import gate_of_pause_key
from sevflow.tasks.orchestrator import RECORD_PREFIX, read_record, read_records
from tests.conftest import Service, read_run, start, wait_final, wait_paused

import playwright.sync_api as playwright_api  # a test extra: missing, the suite fails (never skips silently)
expect = playwright_api.expect

pytestmark = pytest.mark.ui

CHROMIUM = os.environ.get("SEVFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # The run page's flow-run graph draws with WebGL, i.e. in software here, which
                 # slows every step; the tests do not look at the graph.
                 "--disable-webgl", "--disable-3d-apis"]
TIMEOUT_MS = 15_000
REQUIRED = "'decision' is a required property"  # the schema validator's words, in both UIs

expect.set_options(timeout=TIMEOUT_MS)


# --- the two UIs: where a run's page is and how its Resume form is worked ----------------


class ClassicUI:
    """The classic (Vue) UI."""

    name = "v1"
    submit = "Submit"

    def open_resume(self, page: Any) -> Any:
        page.get_by_role("button", name="Resume", exact=True).click()
        return page.get_by_role("dialog")

    def _property(self, dialog: Any, title: str) -> Any:
        # Its labels' `for` does not point at the inputs, so find a field by its title.
        label = dialog.page.locator(".schema-form-property__label", has_text=re.compile(f"^{re.escape(title)}$"))
        return dialog.locator(".schema-form-property").filter(has=label)

    def decision_shown(self, dialog: Any) -> Any:
        return self._property(dialog, "Decision").locator(".p-select-button__value")

    def open_decision(self, dialog: Any) -> None:
        # A click on the select's text toggles its list open and shut at once (the click
        # handler runs twice); the chevron beside it opens it, as it does for a person.
        self._property(dialog, "Decision").locator(".p-select-button__icon").click()

    def text_field(self, dialog: Any, title: str) -> Any:
        return self._property(dialog, title).locator("textarea")


class NewUI:
    """The new (React) UI."""

    name = "v2"
    submit = "Resume"

    def open_resume(self, page: Any) -> Any:
        page.get_by_role("button", name="Open menu").first.click()
        page.get_by_role("menuitem", name="Resume").click()
        # by name: the page also holds closed popovers that carry the role "dialog"
        return page.get_by_role("dialog", name="Resume Flow Run")

    def decision_shown(self, dialog: Any) -> Any:
        return dialog.get_by_role("button", name="Select Decision")

    def open_decision(self, dialog: Any) -> None:
        self.decision_shown(dialog).click()

    def text_field(self, dialog: Any, title: str) -> Any:
        return dialog.get_by_label(title, exact=True)


UIS = {"v1": ClassicUI(), "v2": NewUI()}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_settings(stack: Any) -> dict[str, Any]:
    settings = httpx.get(f"{stack.env()['PREFECT_UI_URL']}/ui-settings", timeout=10).json()
    # Without this the UI talks to :4200 (see the stack fixture).
    assert settings["api_url"] == stack.api_url, settings
    return settings


T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call into Prefect from a helper thread, with this thread's context (settings).

    Playwright's sync API keeps an asyncio loop marked as running in this thread while a
    browser is open, and Prefect's dual sync/async functions (run_deployment, Block.save)
    then return coroutines instead of doing the work.
    """
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(context.run, fn, *args, **kwargs).result()


@pytest.fixture
def rollback_run(service: Service, worker: Any) -> str:
    """An application-rollback of the service, started (not yet paused) before the browser
    opens: it reaches its gate while the browser starts."""
    return start("application-rollback", service=service.name, severity="SEV-1", policy=service.policy,
                 reason="checkout errors after v3")


@pytest.fixture
def page(rollback_run: str) -> Iterator[Any]:
    # Opened after the service's blocks are saved and its run is started, since Prefect calls
    # made while it is open need off_loop; hence one browser per test, not per module.
    with desktop_page() as opened:
        yield opened


@contextmanager
def desktop_page() -> Iterator[Any]:
    """A page in a desktop-sized window of Debian's chromium that reaches only this machine."""
    if not os.access(CHROMIUM, os.X_OK):
        # ./dev test installs chromium or deselects these tests (-m "not ui") loudly; a run
        # that reaches here without a browser proved nothing, so it fails.
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium, or run with -m 'not ui'")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            # Only this machine's server: the new UI also fetches a third-party analytics config.
            context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


@contextmanager
def screenshot_on_failure(page: Any, path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        try:
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot of the page when the test failed: {path}")
        except Exception:  # noqa: BLE001 - the test's own failure is what matters
            pass
        raise


# --- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("ui_name", list(UIS))
def test_approver_answers_through_the_resume_form(
    ui_name: str, service: Service, rollback_run: str, page: Any, ui_settings: dict[str, Any], tmp_path: Path
) -> None:
    if ui_name not in ui_settings["available_uis"]:
        pytest.fail(f"this Prefect server does not serve the {ui_name} UI: {ui_settings['available_uis']}")
    ui = UIS[ui_name]
    base = f"{ui_settings['api_url'][: -len('/api')]}{ui_settings[f'{ui_name}_base_url'].rstrip('/')}"

    run_id = rollback_run
    run = off_loop(wait_paused, run_id, gate_answer=1)
    gate = gate_of_pause_key(run.state.state_details.pause_key)
    v2 = service.repo.commits["v2"][:7]

    with screenshot_on_failure(page, tmp_path / f"ui-{ui_name}-failure.png"):
        page.goto(f"{base}/runs/flow-run/{run_id}")
        dialog = ui.open_resume(page)

        # The proposed change, rendered from markdown (a heading, a code block; no raw markup).
        expect(dialog.get_by_role("heading", name=f"Roll back {service.name} to {v2} (Release v2)")).to_be_visible()
        expect(dialog.locator("pre code").first).to_contain_text("git commit-tree")
        expect(dialog.get_by_text("How to undo:")).to_be_visible()
        expect(dialog.get_by_text("Release v3: new feature")).to_be_visible()
        expect(dialog).to_contain_text("Who may answer: alice, bob")
        shown = dialog.inner_text()
        assert "**" not in shown and "###" not in shown and "```" not in shown

        # `decision` is an explicit choice: nothing chosen yet, no toggle, approve or reject only.
        for title in ("Decision", "Your name", "Reason"):
            expect(dialog.get_by_text(title, exact=True)).to_be_visible()
        expect(dialog.locator(
            "input[type=checkbox], input[type=radio], [role=switch], [role=checkbox], [role=radio]"
        )).to_have_count(0)
        expect(ui.decision_shown(dialog)).to_have_text(re.compile(r"^\s*(Select)?\s*$"))
        expect(ui.decision_shown(dialog)).not_to_contain_text(re.compile("approve|reject"))

        # A complete form but for the decision: refused, and the run stays at its first answer.
        # (v1 refuses in the browser and sends nothing; v2's own check passes anything and it
        # posts the resume, which the server refuses against the form's schema: a toast.)
        ui.text_field(dialog, "Your name").fill("alice")
        ui.text_field(dialog, "Reason").fill("v2 was fine; rolling back from the UI")
        dialog.get_by_role("button", name=ui.submit, exact=True).click()
        expect(page.get_by_text(REQUIRED).first).to_be_visible()
        still = off_loop(read_run, run_id)
        assert still.state.type.value == "PAUSED", still.state
        assert still.state.state_details.pause_key == run.state.state_details.pause_key

        # Now choose: approve, as alice, with a reason.
        ui.open_decision(dialog)
        options = page.get_by_role("option")
        expect(options).to_have_text(["approve", "reject"])
        options.filter(has_text=re.compile("^approve$")).click()
        expect(ui.decision_shown(dialog)).to_have_text(re.compile(r"^\s*approve\s*$"))
        expect(ui.text_field(dialog, "Your name")).to_have_value("alice")
        dialog.get_by_role("button", name=ui.submit, exact=True).click()
        expect(dialog).to_be_hidden()

    final = off_loop(wait_final, run_id)
    assert final.state.type.value == "COMPLETED", final.state.message
    assert service.app.deployed() == "version 2 healthy"
    # The form's answer is the one the gate judged; the refused submission left no answer.
    answer = off_loop(read_record, run_id, f"{RECORD_PREFIX}{gate}-01-answer")
    assert answer and "Approved by alice" in answer["description"], answer
    assert answer["details"]["reason"] == "v2 was fine; rolling back from the UI"
    assert not off_loop(read_records, run_id, f"{RECORD_PREFIX}{gate}-02-answer")
