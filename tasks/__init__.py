"""Side effects, one module per external system (git, http, host, notify, prefect).

Every task here is made with :func:`sevflow.tasks.common.step`, which keys its persisted
result to the flow run: a suspended flow re-runs its body from the top on resume, and this is
what makes each side effect happen exactly once per run.
"""
