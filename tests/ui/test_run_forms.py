"""Every procedure as a person starts it: its deployment's Run form in the Prefect UI, in a real
browser (Debian's chromium driven by Playwright), against the session's server and worker.

- Each of the seven procedures' Run forms shows every parameter with its description, offers
  severity as a choice of exactly SEV-1 … SEV-4, and starts a run with what was typed. The
  target named there does not exist, so each run ends with an error naming it, before any gate.
- An application rollback started from its Run form is rejected in the default UI's Resume form:
  the run ends Rejected, the service is as it was, and its timeline and post-mortem open in the UI.

Screenshots of each form and page are saved in the test's output folder. Waits are on the API
and the page, never on the clock.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from sevflow.deployments import deployment_path, procedures
from sevflow.tasks.orchestrator import RECORD_PREFIX
from tests.conftest import Service, wait_final
from tests.flows.test_plans import records
from tests.support.wait import until
from tests.ui.test_resume_form import (
    UIS, desktop_page, expect, off_loop, screenshot_on_failure,
    ui_settings,  # noqa: F401 - the module-scoped fixture, shared with the Resume form's tests
)

pytestmark = pytest.mark.ui



SEVERITIES = ["SEV-1", "SEV-2", "SEV-3", "SEV-4"]


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with desktop_page() as page:
        yield page


def _deployment(api: str, flow_name: str) -> dict[str, Any]:
    return httpx.get(f"{api}/deployments/name/{deployment_path(flow_name)}", timeout=10).json()


def _runs_of(api: str, deployment_id: str) -> list[dict[str, Any]]:
    return httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}},
                      timeout=10).json()


def _shown(text: str) -> str:
    """A description as the form shows it: markdown's code marks gone, whitespace folded."""
    return re.sub(r"\s+", " ", text.replace("`", "").replace("**", "")).strip()


class RunForm:
    """A deployment's Run form in the classic UI (the one whose form fields are findable by title)."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def field(self, name: str) -> Any:
        label = self.page.locator(".schema-form-property__label", has_text=re.compile(rf"^\s*{re.escape(name)}(\s*\(Optional\))?\s*$"))
        return self.page.locator(".schema-form-property").filter(has=label).first

    def choose(self, name: str, option: str) -> list[str]:
        """Open the select `name`, note its options, pick `option`; the options offered."""
        self.field(name).locator(".p-select-button__icon").click()
        options = self.page.get_by_role("option")
        expect(options.first).to_be_visible()
        offered = [t.strip() for t in options.all_inner_texts()]
        options.filter(has_text=re.compile(rf"^\s*{re.escape(option)}\s*$")).click()
        expect(self.field(name).locator(".p-select-button__value")).to_have_text(re.compile(rf"^\s*{option}\s*$"))
        return offered

    def type(self, name: str, text: str) -> None:
        box = self.field(name).locator("textarea, input[type=text]").first
        expect(box).to_be_editable()
        box.fill(text)
        expect(box).to_have_value(text)

    def submit(self) -> None:
        self.page.get_by_role("button", name="Submit", exact=True).click()
        try:
            expect(self.page).not_to_have_url(re.compile(r"/run$"), timeout=60_000)
        except AssertionError as e:
            raise AssertionError(f"the Run form was not sent; it shows: {self.page.inner_text('body')[:2000]}") from e


def test_every_procedure_starts_from_its_run_form_with_typed_parameters(
        stack: Any, worker: Any, browser_page: Any, ui_settings: dict[str, Any], tmp_path: Path) -> None:
    api = stack.api_url
    base = f"{api[: -len('/api')]}{ui_settings['v1_base_url'].rstrip('/')}"
    page = browser_page
    form = RunForm(page)
    started: dict[str, tuple[str, str]] = {}
    for flow_name in procedures():
        deployment = _deployment(api, flow_name)
        schema = deployment["parameter_openapi_schema"]
        (target,) = schema["required"]  # the one thing a person must name: service, or host
        unknown = f"no-such-{flow_name}"
        with screenshot_on_failure(page, tmp_path / f"{flow_name}-failure.png"):
            page.goto(f"{base}/deployments/deployment/{deployment['id']}/run")
            expect(page.get_by_text(deployment["name"]).first).to_be_visible()
            # Every parameter is there with its description.
            for name, prop in schema["properties"].items():
                assert prop.get("description"), (flow_name, name)
                # (waits: the form draws its descriptions after its fields)
                expect(form.field(name)).to_contain_text(_shown(prop["description"])[:60])
            # Severity is a choice of the four levels, each explained.
            assert form.choose("severity", "SEV-3") == SEVERITIES, flow_name
            expect(form.field("severity")).to_contain_text("SEV-1 critical")
            form.type(target, unknown)
            form.type("reason", f"typed in the {deployment['name']} Run form")
            page.screenshot(path=str(tmp_path / f"{flow_name}-run-form.png"), full_page=True)
            form.submit()
        runs = until(lambda: _runs_of(api, deployment["id"]), 60, 0.3, what=f"the {flow_name} run the form created")
        mine = [r for r in runs if r["parameters"].get(target) == unknown]
        assert len(mine) == 1, runs
        assert mine[0]["parameters"]["severity"] == "SEV-3"
        assert mine[0]["parameters"]["reason"] == f"typed in the {deployment['name']} Run form"
        started[flow_name] = (mine[0]["id"], unknown)

    # Each run names the target it could not find, ends before any gate, and asked no one.
    for flow_name, (run_id, unknown) in started.items():
        final = off_loop(wait_final, run_id, 180)
        assert final.state.type.value == "FAILED", (flow_name, final.state)
        assert unknown in (final.state.message or ""), (flow_name, final.state.message)
        assert not [k for k in off_loop(records, run_id) if k.endswith("-answer") or "-request" in k], flow_name


def test_a_rollback_from_the_run_form_rejected_in_the_resume_form_leaves_all_as_it_was(
        service: Service, worker: Any, stack: Any, browser_page: Any, ui_settings: dict[str, Any],
        tmp_path: Path) -> None:
    api = stack.api_url
    root = api[: -len("/api")]
    classic = f"{root}{ui_settings['v1_base_url'].rstrip('/')}"
    default = f"{root}{ui_settings['v2_base_url'].rstrip('/')}"  # the UI a new browser gets
    page = browser_page
    form = RunForm(page)
    deployment = _deployment(api, "application-rollback")
    before, deployed = service.repo.snapshot(), service.app.deployed()
    already = {r["id"] for r in _runs_of(api, deployment["id"])}

    with screenshot_on_failure(page, tmp_path / "reject-failure.png"):
        page.goto(f"{classic}/deployments/deployment/{deployment['id']}/run")
        form.type("service", service.name)
        form.type("policy", service.policy)
        form.choose("severity", "SEV-1")
        form.type("reason", "checkout errors after v3")
        page.screenshot(path=str(tmp_path / "1-run-form.png"), full_page=True)
        form.submit()
        (run,) = until(lambda: [r for r in _runs_of(api, deployment["id"]) if r["id"] not in already], 60, 0.3,
                       what="the run the form created")
        run_id = run["id"]
        assert run["parameters"]["severity"] == "SEV-1" and run["parameters"]["service"] == service.name

        until(lambda: httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state_type"] in
              {"PAUSED", "FAILED", "CRASHED", "COMPLETED"}, 180, 0.3, what="the rollback to reach its gate")
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]
        assert state["type"] == "PAUSED", state

        # Reject in the default UI's Resume form, as alice, with a reason.
        ui = UIS["v2"]
        page.goto(f"{default}/runs/flow-run/{run_id}")
        dialog = ui.open_resume(page)
        expect(dialog.get_by_role("heading", name=re.compile(f"Roll back {re.escape(service.name)} to"))).to_be_visible()
        ui.open_decision(dialog)
        page.get_by_role("option").filter(has_text=re.compile("^reject$")).click()
        ui.text_field(dialog, "Your name").fill("alice")
        ui.text_field(dialog, "Reason").fill("v3's errors are from the payment provider, not our release")
        page.screenshot(path=str(tmp_path / "2-resume-form-reject.png"), full_page=True)
        dialog.get_by_role("button", name=ui.submit, exact=True).click()
        expect(dialog).to_be_hidden()

    final = off_loop(wait_final, run_id, 120)
    assert final.state.name == "Rejected", final.state
    assert service.repo.snapshot() == before and service.app.deployed() == deployed
    answer = off_loop(records, run_id)[f"{RECORD_PREFIX}rollback-01-answer"]
    assert answer["actor"] == "alice" and answer["details"]["decision"] == "reject", answer

    # Its timeline and post-mortem open in the UI, and say what happened.
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"flow_runs": {"id": {"any_": [run_id]}}},
                           timeout=10).json()
    by_kind = {kind: next((a for a in artifacts if (a.get("key") or "").endswith(f"-{kind}")), None)
               for kind in ("timeline", "incident-postmortem")}
    assert all(by_kind.values()), [a.get("key") for a in artifacts]
    with screenshot_on_failure(page, tmp_path / "artifacts-failure.png"):
        page.goto(f"{classic}/artifacts/artifact/{by_kind['timeline']['id']}")
        expect(page.get_by_text(re.compile("Rejected by alice")).first).to_be_visible()
        page.screenshot(path=str(tmp_path / "3-timeline.png"), full_page=True)
        page.goto(f"{classic}/artifacts/artifact/{by_kind['incident-postmortem']['id']}")
        expect(page.get_by_role("heading", name="Timeline").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"procedure\s+application-rollback\s+·\s+service")).first).to_be_visible()
        expect(page.get_by_role("heading", name="Root Cause").first).to_be_visible()
        expect(page.get_by_text(re.compile("payment provider")).first).to_be_visible()
        page.screenshot(path=str(tmp_path / "4-postmortem.png"), full_page=True)
