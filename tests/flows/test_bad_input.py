"""Bad input gets a clear error and changes nothing (and never reaches a gate)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import Service, start, wait_final
from sevflow.deployments import deployment_path


def _fails_with(run_id: str, *phrases: str) -> None:
    final = wait_final(run_id)
    assert final.state.type.value == "FAILED", final.state
    for phrase in phrases:
        assert phrase in final.state.message, final.state.message


def test_unknown_service(service: Service, worker) -> None:
    run_id = start("application-rollback", service="no-such-service", policy=service.policy)
    _fails_with(run_id, "No service target named 'no-such-service'", service.name)


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
