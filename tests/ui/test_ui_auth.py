"""The Prefect UI behind `sevflow up --auth`, in a real browser (Debian's chromium, Playwright).

Prefect 3.9's server tells its UIs through /ui-settings that the API wants basic auth
(`"auth": "BASIC"` when PREFECT_SERVER_API_AUTH_STRING is set); both UIs (classic at /, new at
/v2) then show a Login page asking for the auth string, keep it in the browser's localStorage
(`prefect-password`) and send it as `Authorization: Basic ...` on every API call.

What this proves, for each UI, on one `sevflow up --auth`:
- without the password the UI's API calls are refused (401) and the Login page is shown;
- a wrong password is refused (401) and the Login page stays;
- the auth string from `$SEVFLOW_HOME/api-auth` logs in: the UI's API calls then succeed (200)
  and the Flows page lists sevflow's procedures (a screenshot is kept in the test's tmp folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import free_port
from tests.support.wait import until
from tests.test_up import Up
from tests.ui.test_resume_form import CHROMIUM, CHROMIUM_ARGS

import playwright.sync_api as playwright_api  # a test extra: missing, the suite fails (never skips silently)
expect = playwright_api.expect

pytestmark = pytest.mark.ui

LOAD_MS = 60_000
LOGIN = "admin:pass"  # the placeholder of the auth-string field on both UIs' Login page


def _api_call(base: str) -> Any:
    """A predicate for page.expect_response: a call the UI made to the server's API."""
    return lambda response: response.url.startswith(f"{base}/api/") and not response.url.endswith("/health")


def test_the_prefect_ui_works_with_the_password_and_its_api_calls_are_refused_without(tmp_path: Path) -> None:
    home, port = tmp_path / "state", free_port()
    home.mkdir()
    base = f"http://127.0.0.1:{port}"
    up = Up(home, port, args=("--auth",))
    try:
        up.wait_for("Ctrl-C stops everything")
        secret = (home / "api-auth").read_text().strip()
        settings = httpx.get(f"{base}/ui-settings", timeout=10).json()
        assert (settings["auth"], settings["api_url"]) == ("BASIC", f"{base}/api"), settings
        until(lambda: "application-rollback" in {f["name"] for f in httpx.post(
            f"{base}/api/flows/filter", json={}, auth=tuple(secret.split(":", 1)), timeout=10).json()},
            120, 0.3, what="the worker to deploy the procedures")

        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for ui, root in (("v1", "/"), ("v2", "/v2/")):
                    context = browser.new_context(viewport={"width": 1400, "height": 1000})
                    context.set_default_timeout(LOAD_MS)  # the first load of a UI bundle on a busy 2-core host
                    page = context.new_page()
                    seen: list[tuple[str, int, bool]] = []
                    page.on("response", lambda r: seen.append(
                        (r.url, r.status, "authorization" in r.request.headers)) if "/api/" in r.url else None)

                    # No password: the UI's first API call is refused and it asks for the auth string.
                    with page.expect_response(lambda r: _api_call(base)(r) and r.status == 401):
                        page.goto(f"{base}{root}", wait_until="commit")
                    field = page.get_by_placeholder(LOGIN)
                    expect(field).to_be_visible()
                    page.screenshot(path=str(tmp_path / f"{ui}-login.png"))
                    assert not any(status == 200 for url, status, _ in seen if not url.endswith("/health")), seen

                    # A wrong password: refused, still on the Login page.
                    field.fill("admin:wrong")
                    with page.expect_response(lambda r: _api_call(base)(r) and r.status == 401):
                        page.get_by_role("button", name="Login").click()
                    expect(page.get_by_placeholder(LOGIN)).to_be_visible()

                    # The password: the API answers, the procedures are listed.
                    page.get_by_placeholder(LOGIN).fill(secret)
                    with page.expect_response(lambda r: _api_call(base)(r) and r.status == 200):
                        page.get_by_role("button", name="Login").click()
                    expect(page.get_by_placeholder(LOGIN)).to_have_count(0)
                    with page.expect_response(lambda r: r.url.startswith(f"{base}/api/flows/") and r.status == 200):
                        page.goto(f"{base}{root}flows", wait_until="commit")
                    expect(page.get_by_text("application-rollback").first).to_be_visible()
                    page.screenshot(path=str(tmp_path / f"{ui}-flows.png"), full_page=True)
                    authed = [(url, status) for url, status, header in seen if header]
                    assert authed and all(status != 401 for url, status in authed[-5:]), seen[-10:]
                    context.close()
            finally:
                browser.close()
    finally:
        assert up.ctrl_c() == 0
    assert os.path.getsize(tmp_path / "v1-flows.png") > 0 and os.path.getsize(tmp_path / "v2-flows.png") > 0
