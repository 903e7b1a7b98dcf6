"""Bad input gets a clear error and changes nothing (and never reaches a gate)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import DEPLOY_TOKEN, HEALTH_TOKEN, Service, start, wait_final
from sevflow.deployments import deployment_path


def _fails_with(run_id: str, *phrases: str) -> None:
    final = wait_final(run_id)
    assert final.state.type.value == "FAILED", final.state
    for phrase in phrases:
        assert phrase in final.state.message, final.state.message


def test_unknown_service(service: Service, worker) -> None:
    run_id = start("application-rollback", service="no-such-service", policy=service.policy)
    _fails_with(run_id, "No service target named 'no-such-service'", service.name)


def test_a_target_saved_with_bad_fields_is_refused_by_name_and_changes_nothing(service: Service, worker) -> None:
    """A block edited through the API (as the UI's Blocks page saves it) that breaks the block's
    rules: the run names the block and each bad field, shows no secret, changes nothing."""
    from prefect.client.orchestration import get_client

    from sevflow.blocks import ServiceTarget

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(service.name, ServiceTarget.get_block_type_slug(), include_secrets=False)
        client.request("PATCH", f"/block_documents/{doc.id}", json={
            "data": {"health_check_urls": ["localhost:3000/health"], "config_files": ["../../etc/passwd"],
                     "command_timeout_seconds": 0},
            "merge_existing_data": True})
    before, deployed = service.repo.snapshot(), service.app.deployed()
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    _fails_with(run_id, f"The service target {service.name!r} is saved but not valid", "health_check_urls.0",
                "config_files", "command_timeout_seconds")
    final = wait_final(run_id)
    assert "'../../etc/passwd'" in final.state.message  # which path is wrong
    assert DEPLOY_TOKEN not in final.state.message and HEALTH_TOKEN not in final.state.message
    assert service.repo.snapshot() == before
    assert service.app.deployed() == deployed


def test_the_block_schema_marks_what_the_ui_checks_on_save() -> None:
    """The Blocks page builds its form and checks it from this schema: one name (the block's; the
    `service` field is optional), URLs that must be http(s), times above zero, and each field
    a procedure needs says which."""
    from sevflow.blocks import ServiceTarget

    schema = ServiceTarget.model_json_schema()
    assert "service" not in schema.get("required", [])
    assert schema["required"] == ["repository"]
    urls = schema["properties"]["health_check_urls"]
    assert urls["items"]["pattern"] == r"^https?://\S+$"
    assert schema["properties"]["command_timeout_seconds"]["exclusiveMinimum"] == 0
    for field, procedure in (("deploy_command", "Rollback: Application"), ("reload_command", "Rollback: Configuration"),
                             ("health_check_urls", "Production System Down"), ("config_files", "Rollback: Configuration")):
        assert procedure in schema["properties"][field]["description"], field
    import pydantic

    for bad in ({"health_check_urls": ["ftp://x"]}, {"config_files": ["/etc/app.env"]}, {"command_timeout_seconds": 0}):
        with pytest.raises(pydantic.ValidationError):
            ServiceTarget(repository="/srv/app", **bad)
    assert ServiceTarget(repository="/srv/app").spec("shop").service == "shop"
    assert ServiceTarget(repository="/srv/app", service="Shop (EU)").spec("shop").service == "Shop (EU)"


def test_dirty_working_tree(service: Service, worker) -> None:
    (service.repo.path / "app.txt").write_text("hand edit on the server\n")
    before = service.repo.snapshot()
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    _fails_with(run_id, "app.txt")
    assert service.repo.snapshot() == before


def test_unknown_version(service: Service, worker) -> None:
    before = service.repo.snapshot()
    run_id = start("application-rollback", service=service.name, policy=service.policy, version="v9.9.9")
    _fails_with(run_id, "v9.9.9")
    assert service.repo.snapshot() == before


def test_missing_repository(service: Service, worker) -> None:
    shutil.rmtree(service.repo.path)
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    _fails_with(run_id, str(service.repo.path))
    assert not service.repo.path.exists()


def test_config_file_not_in_the_block(service: Service, worker) -> None:
    before = service.repo.snapshot()
    run_id = start("configuration-rollback", service=service.name, policy=service.policy, config_file="app.txt")
    _fails_with(run_id, "app.txt", "config/app.env")
    assert service.repo.snapshot() == before


def test_no_rule_for_the_change_stops_before_asking(service: Service, worker) -> None:
    from sevflow.blocks import ApprovalPolicy, ApprovalRule

    ApprovalPolicy(rules=[ApprovalRule(change_kind="data-restore", approvers=["dba"])]).save(service.policy, overwrite=True)
    before = service.repo.snapshot()
    run_id = start("application-rollback", service=service.name, policy=service.policy)
    _fails_with(run_id, "no rule for change kind 'application-rollback'")
    assert service.repo.snapshot() == before


@pytest.mark.parametrize("params", [{"service": "x", "severity": "SEV-9"}, {"service": 3, "surprise": True}])
def test_bad_parameters_are_refused_by_the_server(params: dict, service: Service, worker) -> None:
    from prefect.deployments import run_deployment

    with pytest.raises(Exception, match="(?i)validation|parameter"):
        run_deployment(deployment_path("application-rollback"), parameters=params, timeout=0)


def test_production_down_without_an_outage_profile_says_what_to_create(service: Service, worker) -> None:
    before = service.repo.snapshot()
    run_id = start("production-system-down", service=service.name, policy=service.policy)
    _fails_with(run_id, f"No sevflow Outage Profile block named {service.name!r}", "control URL")
    assert service.repo.snapshot() == before
