"""The `sevflow` command line."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="sevflow: the emergency runbook as approval-gated Prefect flows.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def up(
    port: int = typer.Option(4200, help="Port of the embedded Prefect server (127.0.0.1)."),
    limit: int = typer.Option(20, help="Most flow runs executing at once (waiting gates hold none)."),
    escalation_interval: float = typer.Option(30.0, help="Seconds between escalation watcher passes."),
    intake_port: int = typer.Option(8787, help="Port of the alert intake (127.0.0.1); 0 starts no intake."),
) -> None:
    """Start the embedded stack: a Prefect server (SQLite, loopback), a worker serving every procedure
    and the alert intake."""
    from sevflow.embedded import up as run_up
    from sevflow.errors import SevflowError

    try:
        raise typer.Exit(run_up(port=port, limit=limit, escalation_interval=escalation_interval,
                                intake_port=intake_port, echo=out.print))
    except SevflowError as exc:
        _fail(str(exc))


@app.command()
def intake(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you say otherwise)."),
    port: int = typer.Option(8787, help="Port to listen on."),
    rules: str = typer.Option("", help="Routing rules file (default: $SEVFLOW_HOME/intake-rules.yaml)."),
    state: str = typer.Option("", help="Folder of the durable alert store (default: $SEVFLOW_HOME/intake)."),
    answer_wait: float = typer.Option(3.0, help="Seconds an answer waits for a new incident's flow run id."),
    credentials_refresh: float = typer.Option(30.0, help="Seconds between re-reads of the alert source blocks."),
) -> None:
    """Receive alerts (Alertmanager, Grafana, PagerDuty, Datadog, Opsgenie, SNS, generic) and start procedures."""
    import os
    from pathlib import Path

    # The intake retries delivery itself, with its own backoff; the client's own retries would
    # only hold a delivery lane longer while Prefect is down. Set before Prefect is imported.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "1")
    from sevflow.embedded import state_home
    from sevflow.errors import SevflowError
    from sevflow.intake.app import serve as run_intake

    home = state_home()
    try:
        run_intake(host, port, Path(rules) if rules else home / "intake-rules.yaml",
                   Path(state) if state else home / "intake", answer_wait=answer_wait,
                   credentials_refresh=credentials_refresh)
    except SevflowError as exc:
        _fail(str(exc))


@app.command()
def serve(
    limit: int = typer.Option(20, help="Most flow runs executing at once."),
    poll: float = typer.Option(0.2, help="Seconds between polls for runs to start (and resumed runs)."),
    escalation_interval: float = typer.Option(30.0, help="Escalation watcher schedule; 0 disables it here."),
) -> None:
    """Serve every procedure from this process (a worker) against PREFECT_API_URL."""
    from sevflow.worker import serve as run_serve

    run_serve(limit=limit, query_seconds=poll, escalation_interval=escalation_interval or None)


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"--param takes key=value, got {pair!r}")
        try:
            value: Any = json.loads(raw)
            if not isinstance(value, (int, float, bool, list, dict)) or isinstance(value, bool) and raw not in ("true", "false"):
                value = raw
        except json.JSONDecodeError:
            value = raw
        params[key.strip()] = value
    return params


def _procedure_params(procedure: str, pairs: list[str]) -> dict[str, Any]:
    """The procedure's parameters from `key=value` pairs, or a clear error (exit 2)."""
    from sevflow.deployments import procedures

    flows = procedures()
    if procedure not in flows:
        _fail(f"unknown procedure {procedure!r}; known: {', '.join(sorted(flows))}")
    params = _parse_params(pairs)
    signature = inspect.signature(flows[procedure].fn)
    unknown = sorted(set(params) - set(signature.parameters))
    if unknown:
        _fail(f"{procedure} has no parameter {', '.join(unknown)}; it takes: {', '.join(signature.parameters)}")
    missing = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty and n not in params]
    if missing:
        _fail(f"{procedure} needs --param {' --param '.join(m + '=...' for m in missing)}")
    return params


@app.command()
def plan(
    procedure: str = typer.Argument(..., help="e.g. application-rollback"),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value, repeatable"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Dry run: gather the facts here (read-only) and print the exact plan, with its digest, that
    the procedure's first gate would ask for. Changes nothing."""
    from sevflow.deployments import procedures

    params = _procedure_params(procedure, param) | {"dry_run": True}
    state = procedures()[procedure](**params, return_state=True)
    if state.name == "DryRun":
        shown = state.result()
        if as_json:
            out.print_json(data=shown)
        else:
            # Plain output, never wrapped: the plan is read and copied exactly.
            typer.echo(shown["text"])
            typer.echo("")
            for entry in shown.get("plans") or []:
                typer.echo(f"Gate {entry['gate']!r} would ask about plan {entry['digest']}.")
            typer.echo("Nothing was asked for and nothing was changed.")
        return
    if state.is_completed():
        out.print(state.message or state.name, markup=False)
        return
    _fail(f"{procedure} could not make a plan ({state.name}): {state.message}", code=1)


@app.command()
def run(
    procedure: str = typer.Argument(..., help="e.g. application-rollback"),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value, repeatable"),
) -> None:
    """Start a procedure's run on the served deployment and print its link."""
    from prefect.deployments import run_deployment

    from sevflow.deployments import DEPLOYMENT_NAME
    from sevflow.tasks.orchestrator import run_url

    params = _procedure_params(procedure, param)
    try:
        flow_run = run_deployment(f"{procedure}/{DEPLOYMENT_NAME}", parameters=params, timeout=0)
    except Exception as exc:  # the server's words are the useful part
        _fail(f"could not start {procedure}: {exc}")
    out.print(f"Started {procedure}: flow run {flow_run.id} ({flow_run.name})")
    out.print(f"  {run_url(flow_run.id) or ''}")
    out.print(f"  It will pause at the approval gate; answer with: sevflow approve {flow_run.id} --as NAME --reason TEXT")


@app.command()
def pending() -> None:
    """List runs waiting at an approval gate."""
    from sevflow.gate import waiting_gates
    from sevflow.models import RECORD_PREFIX
    from sevflow.tasks.orchestrator import read_records

    gates = waiting_gates()
    if not gates:
        out.print("No run is waiting for approval.")
        return
    table = Table("flow run", "incident", "sev", "proposed change (plan digest)", "waiting since (UTC)",
                  "who may answer", "approved by")
    for run, request in gates:
        answers = read_records(run.id, f"{RECORD_PREFIX}{request.gate}-")
        approved = sorted({v.get("actor", "") for v in answers.values()
                           if isinstance(v, dict) and v.get("details", {}).get("verdict") == "counted"})
        table.add_row(
            str(run.id), request.incident.incident_id, request.incident.severity.value,
            f"{request.plan.title} (plan {request.digest[:12]})",
            request.opened_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{', '.join(request.approvers)} ({request.required_approvals} needed)", ", ".join(approved) or "-",
        )
    out.print(table)


def _answer(decision: str, flow_run_id: str, name: str, reason: str, wait: float) -> None:
    from sevflow.gate import AnswerRefused, answer_gate

    try:
        verdict = answer_gate(flow_run_id, decision, name, reason, wait_seconds=wait)  # type: ignore[arg-type]
    except AnswerRefused as exc:
        _fail(str(exc), code=1)
    out.print(verdict)


@app.command()
def approve(
    flow_run_id: str,
    as_: str = typer.Option(..., "--as", help="Your name, as the approval policy lists you."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the timeline."),
    wait: float = typer.Option(15.0, help="Seconds to wait for the gate's verdict."),
) -> None:
    """Approve the change a run is waiting on."""
    _answer("approve", flow_run_id, as_, reason, wait)


@app.command()
def reject(
    flow_run_id: str,
    as_: str = typer.Option(..., "--as", help="Your name, as the approval policy lists you."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the timeline."),
    wait: float = typer.Option(15.0, help="Seconds to wait for the gate's verdict."),
) -> None:
    """Reject the change a run is waiting on: nothing is changed."""
    _answer("reject", flow_run_id, as_, reason, wait)


@app.command()
def escalate() -> None:
    """Run one pass of the escalation watcher now."""
    from sevflow.flows.approval_escalation import approval_escalation

    done = approval_escalation()
    out.print(done or "nothing due")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
