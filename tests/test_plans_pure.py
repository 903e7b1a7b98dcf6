"""Plans, digests and the text an approver reads. Pure: no server."""

from __future__ import annotations

from datetime import datetime, timezone

from sevflow import markdown as md
from sevflow import plans
from sevflow.models import ServiceSpec
from sevflow.versions import CommitInfo, ConfigDiff, RollbackPreview

SPEC = ServiceSpec(block="shop", service="shop", repository="/srv/shop", branch="main",
                   build_command="npm run build", deploy_command="npm start", reload_command="kill -HUP 1",
                   health_check_urls=["http://localhost:3000/api/health"], config_files=["config/app.env"],
                   secret_env=["DEPLOY_TOKEN"], health_check_token=True)
GOOD = CommitInfo(sha="a" * 40, short="aaaaaaa", subject="Release v2 <b>bold</b> `code`", author="Ada",
                  authored_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
PREVIEW = RollbackPreview(from_sha="b" * 40, to_sha="a" * 40, to_tree="c" * 40, diff_stat=" app | 2 +-",
                          files_changed=1, insertions=1, deletions=1, diff="-```\n+</details><script>x</script>\n")


def test_the_digest_covers_every_field_of_the_plan() -> None:
    plan = plans.application_rollback_plan(SPEC, GOOD, PREVIEW, "run-1")
    assert plan.digest == plans.application_rollback_plan(SPEC, GOOD, PREVIEW, "run-1").digest
    assert len(plan.digest) == 64
    other_deploy = SPEC.model_copy(update={"deploy_command": "npm start --evil"})
    assert plans.application_rollback_plan(other_deploy, GOOD, PREVIEW, "run-1").digest != plan.digest
    other_head = PREVIEW.model_copy(update={"from_sha": "d" * 40})
    assert plans.application_rollback_plan(SPEC, GOOD, other_head, "run-1").digest != plan.digest
    # Which reading of the block a plan came from does not change what it does.
    assert plans.application_rollback_plan(SPEC.model_copy(update={"reading": "rollback-2"}), GOOD, PREVIEW,
                                           "run-1").digest == plan.digest


def test_the_plan_names_secrets_never_their_values_and_resolves_everything() -> None:
    plan = plans.application_rollback_plan(SPEC, GOOD, PREVIEW, "run-1")
    assert plan.secrets_used == ["DEPLOY_TOKEN", "health_check_token"]
    restore, build, deploy = plan.operations
    assert (restore.expected_head, restore.source_sha, restore.source_tree) == ("b" * 40, "a" * 40, "c" * 40)
    assert (build.command, deploy.command, deploy.cwd) == ("npm run build", "npm start", "/srv/shop")
    assert deploy.target_fingerprint == SPEC.fingerprint()
    assert [p.check for p in plan.preconditions] == ["git-head", "target-unchanged"]
    assert plan.verify and plan.verify.urls == ["http://localhost:3000/api/health"]


def test_free_text_cannot_break_out_of_the_form() -> None:
    text = plans.application_rollback_plan(SPEC, GOOD, PREVIEW, "run-1").describe()
    assert "<script>" not in text.split("```diff")[0]  # the title and subject are escaped
    assert "&lt;b&gt;bold&lt;/b&gt;" in text
    # The diff holds a line of three backticks: its fence is longer, so it cannot close it.
    assert "````diff\n-```\n+</details><script>x</script>\n````" in text
    assert md.escape("**a** [x](y) <i>") == r"\*\*a\*\* \[x\](y) &lt;i&gt;"
    assert md.code("a`b") == "``a`b``"


def test_configuration_plan_restores_one_blob() -> None:
    diff = ConfigDiff(path="config/app.env", from_sha="a" * 40, head_sha="b" * 40, diff="-X=1\n+X=2\n",
                      identical=False, blob="e" * 40)
    plan = plans.configuration_rollback_plan(SPEC, diff, GOOD, "run-1")
    restore, reload = plan.operations
    assert (restore.path, restore.source_tree) == ("config/app.env", "e" * 40)
    assert reload.kind == "reload" and reload.command == "kill -HUP 1"
    assert "git checkout aaaaaaaaaaaa -- config/app.env" in plan.describe()
