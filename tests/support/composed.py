"""A procedure of the tests' own that uses another: it rolls the application back by calling
the rollback's body inside its own run (as Production System Down will)."""

from prefect import flow

from sevflow.flows.application_rollback import roll_back_application
from sevflow.kit import Procedure, Severity, begin, read_service_target, run


@flow(name="composed-rollback", persist_result=True, log_prints=False)
def composed_rollback(service: str, policy: str = "default"):
    read_service_target(service)
    ctx = begin("composed-rollback", service, Severity.SEV1, None, "composition test", policy)
    return run(ctx, remediate, service)


def remediate(ctx: Procedure, service: str):
    return roll_back_application(ctx, service)


if __name__ == "__main__":
    composed_rollback.serve(name="test", limit=2)
