"""The Service Target as a new user makes it: the Blocks page's Create form in the Prefect UI, in
a real browser, against the session's server and worker.

One name: the block's (its optional "Service name" is left empty), and procedures find the service
by it. The form marks what procedures need and refuses a time of zero before saving; a field the
form cannot check (a health-check URL that is not http(s)) is refused by name when a run reads
the block, and nothing changes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from sevflow.blocks import ServiceTarget
from tests.conftest import Service, start, wait_final
from tests.ui.test_resume_form import expect, off_loop, screenshot_on_failure, ui_settings  # noqa: F401
from tests.ui.test_run_forms import browser_page  # noqa: F401

pytestmark = pytest.mark.ui


def _field(page: Any, title: str) -> Any:
    # A plain field's title is its label; a "string or null" field's is the heading of its choice.
    label = page.locator(".p-label__label, .schema-form-property-any-of h3",
                         has_text=re.compile(rf"^\s*{re.escape(title)}(\s*\(.*\))?\s*$"))
    return page.locator(".schema-form-property").filter(has=label).last


def _documents(api: str) -> dict[str, dict[str, Any]]:
    docs = httpx.post(f"{api}/block_documents/filter", json={"block_types": {"slug": {"any_": [
        ServiceTarget.get_block_type_slug()]}}}, timeout=10).json()
    return {d["name"]: d for d in docs if d.get("name")}


def _plan_artifact(api: str, run_id: str) -> str:
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"flow_runs": {"id": {"any_": [run_id]}}},
                           timeout=10).json()
    return next(a["data"] for a in artifacts if a.get("key") == "plan-rollback")


def test_a_service_target_made_in_the_blocks_page_is_found_by_its_one_name(
        service: Service, worker: Any, stack: Any, browser_page: Any, ui_settings: dict[str, Any],
        tmp_path: Path) -> None:
    api = stack.api_url
    base = f"{api[: -len('/api')]}{ui_settings['v1_base_url'].rstrip('/')}"
    name = f"ui-{service.name}"
    saved = _documents(api)[service.name]["data"]  # the fixture's own target: its commands, to copy
    page = browser_page
    with screenshot_on_failure(page, tmp_path / "block-form-failure.png"):
        page.goto(f"{base}/blocks/catalog/{ServiceTarget.get_block_type_slug()}/create")
        block_name = page.locator(".p-label", has=page.locator(".p-label__label", has_text=re.compile("^Block Name$")))
        block_name.locator("input").fill(name)
        # What each field is for, and which procedures need it, is on the form.
        expect(_field(page, "Service name")).to_contain_text("Leave empty: the block's name is the service's name")
        expect(_field(page, "Deploy Command")).to_contain_text("Needed by: Rollback: Application")
        expect(_field(page, "Reload Command")).to_contain_text("Needed by: Rollback: Configuration")
        expect(_field(page, "Health Check Urls")).to_contain_text("Production System Down")
        _field(page, "Repository").locator("textarea").first.fill(str(service.repo.path))
        _field(page, "Deploy Command").locator("textarea").first.fill(saved["deploy_command"])
        _field(page, "Health Check Urls").locator("textarea").first.fill(f'["{service.app.health_url}"]')
        timeout = _field(page, "Command Timeout Seconds").locator("input").first
        timeout.fill("0")
        page.get_by_role("button", name="Create", exact=True).click()
        expect(_field(page, "Command Timeout Seconds")).to_contain_text("must be greater than 0")
        page.screenshot(path=str(tmp_path / "1-refused-on-save.png"), full_page=True)
        assert name not in _documents(api)  # refused: nothing saved
        timeout.fill("60")
        page.get_by_role("button", name="Create", exact=True).click()
        expect(page).to_have_url(re.compile(r"/blocks/block/[0-9a-f-]{36}$"))
        page.screenshot(path=str(tmp_path / "2-saved.png"), full_page=True)

    doc = _documents(api)[name]
    assert doc["data"].get("service") is None and doc["data"]["repository"] == str(service.repo.path)
    # A dry run by the block's name plans for the service of that name.
    before = service.repo.snapshot()
    run_id = off_loop(start, "application-rollback", service=name, policy=service.policy, dry_run=True)
    final = off_loop(wait_final, run_id, 120)
    assert final.state.type.value == "COMPLETED", final.state
    assert f"Roll back {name} to" in _plan_artifact(api, run_id)

    # Edited (as the form lets it be) to a health check without http(s): refused by name, nothing changes.
    httpx.patch(f"{api}/block_documents/{doc['id']}", json={"data": {"health_check_urls": ["localhost:3000/health"]},
                                                             "merge_existing_data": True}, timeout=10).raise_for_status()
    run_id = off_loop(start, "application-rollback", service=name, policy=service.policy)
    final = off_loop(wait_final, run_id, 120)
    assert final.state.type.value == "FAILED", final.state
    assert f"The service target {name!r} is saved but not valid: health_check_urls.0" in final.state.message
    assert service.repo.snapshot() == before
