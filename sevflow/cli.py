"""The `sevflow` command line."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
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
    database: str = typer.Option("", help="Run the server on PostgreSQL: postgresql://user[:pw]@host[:port]/db "
                                          "(default: SQLite in the state folder)."),
    auth: bool = typer.Option(False, "--auth", help="Lock the API with a basic-auth password kept in "
                              "$SEVFLOW_HOME/api-auth (0600): server, worker, intake and `sevflow` commands use it."),
    demo: bool = typer.Option(False, "--demo", help="Also create a demo service (a git repository with a good and a "
                              "broken release, a tiny app serving the broken one) in the state folder, and print "
                              "the command that rolls it back."),
) -> None:
    """Start the embedded stack: a Prefect server (SQLite, loopback), a worker serving every procedure
    and the alert intake."""
    from sevflow.embedded import up as run_up
    from sevflow.errors import SevflowError

    try:
        raise typer.Exit(run_up(port=port, limit=limit, escalation_interval=escalation_interval,
                                intake_port=intake_port, echo=out.print, database=database or None, auth=auth,
                                demo=demo))
    except SevflowError as exc:
        _fail(str(exc))


@app.command()
def intake(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you say otherwise)."),
    port: int = typer.Option(8787, help="Port to listen on."),
    rules: str = typer.Option("", help="Routing rules file (default: $SEVFLOW_HOME/intake-rules.yaml)."),
    state: str = typer.Option("", help="Folder of the durable alert store (default: $SEVFLOW_HOME/intake)."),
    answer_wait: float = typer.Option(3.0, help="Seconds an answer waits for a new incident's flow run id."),
    credentials_refresh: float = typer.Option(2.0, help="Seconds between re-reads of the alert source blocks."),
) -> None:
    """Receive alerts (Alertmanager, Grafana, PagerDuty, Datadog, Opsgenie, SNS, generic) and start procedures."""
    import os
    from pathlib import Path

    # The intake retries every call to Prefect itself, sooner and with its own backoff; the
    # client's own retries (2 s and more) would only hold a lane and delay runs (the sleep the
    # client still takes after its last attempt is cut by `sevflow.intake.app._answer_at_once`). And it never
    # starts Prefect's temporary server: it needs the one the procedures run on. Set before
    # Prefect is imported.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "0")
    os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    from sevflow.embedded import state_home
    from sevflow.errors import SevflowError
    from sevflow.intake.app import require_prefect
    from sevflow.intake.app import serve as run_intake

    home = state_home()
    try:
        require_prefect()
        run_intake(host, port, Path(rules) if rules else home / "intake-rules.yaml",
                   Path(state) if state else home / "intake", answer_wait=answer_wait,
                   credentials_refresh=credentials_refresh)
    except SevflowError as exc:
        _fail(str(exc))


@app.command("intake-dead-letters")
def intake_dead_letters(
    state: str = typer.Option("", help="Folder of the intake's store (default: $SEVFLOW_HOME/intake)."),
    limit: int = typer.Option(100, help="Most recent dead letters to list."),
) -> None:
    """List the alerts Prefect refused for good (e.g. their run was deleted): kept, not retried."""
    from pathlib import Path

    from sevflow.embedded import state_home
    from sevflow.intake.store import read_dead_letters

    path = (Path(state) if state else state_home() / "intake") / "alerts.db"
    if not path.exists():
        _fail(f"no intake store at {path}; pass --state")
    letters = read_dead_letters(path, limit)
    if not letters:
        out.print("No dead letters: every accepted alert reached Prefect or is queued for it.")
        return
    table = Table("seq", "received (UTC)", "source", "alert", "status", "incident", "refused (UTC)", "why")
    for d in letters:
        table.add_row(str(d["seq"]), d["received_at"][:19], d["source"], d["identity"], d["status"],
                      d["incident_id"] or "-", (d["dead_at"] or "")[:19], d["error"] or "")
    out.print(table)
    raise typer.Exit(1)  # something needs a person


@app.command()
def serve(
    limit: int = typer.Option(20, help="Most flow runs executing at once."),
    poll: float = typer.Option(0.2, help="Seconds between polls for runs to start (and resumed runs)."),
    escalation_interval: float = typer.Option(30.0, help="Seconds between looks for due escalations (a "
                                                        "watcher run starts only when one is due); 0: none."),
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
            # A step whose plan waits on a person's answer (a hotfix ref) has no digest yet.
            plans = shown.get("plans") or ([shown] if shown.get("digest") else [])
            for entry in plans:
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
    as_: str = typer.Option("", "--as", help="Your name: recorded as who requested the change (the policy "
                            "may then refuse your own approval)."),
    key: str = typer.Option("", "--key", envvar="SEVFLOW_SIGNING_KEY", help="Sign the request with this SSH key."),
    host: str = typer.Option("", help="Run it on this host's queue (work pool deployments: host-NAME)."),
) -> None:
    """Start a procedure's run on its deployment (in its severity's queue) and print its link."""
    from prefect.deployments import run_deployment

    from sevflow.deployments import deployment_path
    from sevflow.tasks.orchestrator import run_url

    params = _procedure_params(procedure, param)
    if key and not Path(key).expanduser().exists():
        _fail(f"No signing key at {key}: nothing was started.")
    try:
        flow_run = run_deployment(deployment_path(procedure), parameters=params, timeout=0,
                                  work_queue_name=_queue_for_run(procedure, params, host))
    except Exception as exc:  # the server's words are the useful part
        _fail(f"could not start {procedure}: {exc}")
    if as_:
        _record_requester(str(flow_run.id), as_, key)
    _print_started(procedure, flow_run, run_url(flow_run.id))


def _queue_for_run(procedure: str, params: dict[str, Any], host: str) -> str | None:
    """Work pool deployments: the run goes to its severity's queue (or its host's)."""
    from prefect.client.orchestration import get_client

    from sevflow.deployments import deployment_path, run_queue

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_path(procedure))
        except Exception as exc:  # the server's words are the useful part
            _fail(f"could not start {procedure}: {exc}. Is `sevflow up`, `sevflow serve` or `sevflow deploy` "
                  "done against this server?")
    if host and not deployment.work_pool_name:
        _fail("--host needs the work pool deployments (`sevflow deploy`); this server serves them directly")
    try:
        return run_queue(deployment.work_pool_name, params.get("severity"), host or None)
    except ValueError as exc:
        _fail(str(exc))
    return None


def _print_started(procedure: str, flow_run: Any, url: str | None) -> None:
    # soft_wrap: a command a person copies must not be broken by the terminal's width.
    out.print(f"Started {procedure}: flow run {flow_run.id} ({flow_run.name})", soft_wrap=True)
    if url:
        out.print(f"  {url}", soft_wrap=True)
    out.print("  It will pause at the approval gate; answer with:", soft_wrap=True)
    out.print(f"  sevflow approve {flow_run.id} --as NAME --reason TEXT", soft_wrap=True, highlight=False)


def _record_requester(flow_run_id: str, name: str, key: str) -> None:
    from sevflow import identity
    from sevflow.models import REQUESTER_KEY, utcnow
    from sevflow.tasks.orchestrator import write_record

    signed_at = utcnow().isoformat()
    record = {"name": name, "signed_at": signed_at, "how": "sevflow run"}
    if key:
        message = identity.requester_message(run=flow_run_id, requester=name, signed_at=signed_at)
        record["signature"] = identity.sign(message, Path(key))
    write_record(flow_run_id, REQUESTER_KEY, record)


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
    table = Table("run", "incident", "sev", "proposed change (plan digest)", "waiting since (UTC)",
                  "who may answer", "approved by")
    table.columns[0].no_wrap = True  # a run's short id is copied whole, whatever the terminal's width
    for run, request in gates:
        answers = read_records(run.id, f"{RECORD_PREFIX}{request.gate}-")
        approved = sorted({v.get("actor", "") for v in answers.values()
                           if isinstance(v, dict) and v.get("details", {}).get("verdict") == "counted"})
        table.add_row(
            short_id(run.id), request.incident.incident_id, request.incident.severity.value,
            f"{request.plan.title} (plan {request.digest[:12]})",
            request.opened_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{', '.join(request.approvers)} ({request.required_approvals} needed)", ", ".join(approved) or "-",
        )
    out.print(table)
    out.print(f"run: the flow run id's last {SHORT_ID} characters; every command takes it, or the full id. "
              "Answer: sevflow approve RUN --as NAME --reason TEXT", soft_wrap=True)


def _answer(decision: str, flow_run_id: str, name: str, reason: str, wait: float, key: str = "",
            ref: str | None = None) -> None:
    from sevflow.errors import ApprovalError
    from sevflow.gate import AnswerRefused, answer_gate

    flow_run_id = resolve_run_id(flow_run_id)
    idle = _no_worker_hint(flow_run_id)
    if idle:
        wait = 0.0  # nobody can judge the answer now: do not wait for a verdict
    try:
        verdict = answer_gate(flow_run_id, decision, name, reason, wait_seconds=wait,  # type: ignore[arg-type]
                              key=key or None, ref=ref)
    except AnswerRefused as exc:
        _fail(str(exc), code=1)
    except ApprovalError as exc:
        _fail(str(exc), code=2)
    if idle:
        out.print(f"Answer recorded for run {flow_run_id}.", soft_wrap=True)
        err.print(idle, soft_wrap=True, highlight=False)
        return
    out.print(verdict)


KEY_HELP = ("Your SSH key to sign the answer with (private key file, or the .pub of a key in ssh-agent); "
            "default $SEVFLOW_SIGNING_KEY. Needed where the policy asks for signed answers.")


@app.command()
def approve(
    flow_run_id: str,
    as_: str = typer.Option(..., "--as", help="Your name, as the approval policy lists you."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the timeline."),
    wait: float = typer.Option(15.0, help="Seconds to wait for the gate's verdict."),
    key: str = typer.Option("", "--key", envvar="SEVFLOW_SIGNING_KEY", help=KEY_HELP),
    ref: str = typer.Option("", help="For a gate that asks for one: the commit, tag or branch to deploy (hotfix)."),
) -> None:
    """Approve the change a run is waiting on (or, with --ref, name the hotfix it asks for)."""
    _answer("approve", flow_run_id, as_, reason, wait, key, ref or None)


@app.command()
def reject(
    flow_run_id: str,
    as_: str = typer.Option(..., "--as", help="Your name, as the approval policy lists you."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the timeline."),
    wait: float = typer.Option(15.0, help="Seconds to wait for the gate's verdict."),
    key: str = typer.Option("", "--key", envvar="SEVFLOW_SIGNING_KEY", help=KEY_HELP),
) -> None:
    """Reject the change a run is waiting on: nothing is changed."""
    _answer("reject", flow_run_id, as_, reason, wait, key)


def _incident_tags(tags: list[str]) -> dict[str, str]:
    return {k: v for k, _, v in (t.partition(":") for t in tags) if k in ("incident", "sev", "service") and v}


@app.command()
def incidents(limit: int = typer.Option(200, help="Most runs to read.")) -> None:
    """List incidents (open first): severity, service, age, the state of their runs, gates waiting."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from sevflow.models import utcnow

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["sevflow"])),
                                     limit=limit)
    grouped: dict[str, list[Any]] = {}
    for run in runs:
        tags = _incident_tags(run.tags)
        if "incident" in tags:
            grouped.setdefault(tags["incident"], []).append(run)
    if not grouped:
        out.print("No incidents.")
        return
    table = Table("incident", "sev", "service", "age", "runs", "waiting at a gate")
    rows = []
    for incident_id, found in grouped.items():
        tags = _incident_tags(found[0].tags)
        started = min((r.start_time or r.expected_start_time or utcnow()) for r in found)
        # A follow-up scheduled a day after resolution does not keep the incident open.
        open_ = any(r.state and not r.state.is_final() for r in found if "sevflow-follow-up" not in r.tags)
        waiting = [r.name for r in found if r.state and r.state.type.value == "PAUSED"]
        states = ", ".join(f"{r.name}: {r.state.name if r.state else '?'}" for r in found)
        rows.append((not open_, started, incident_id, tags.get("sev", "?"), tags.get("service", "?"), states,
                     ", ".join(waiting) or "-"))
    for _closed, started, incident_id, sev, service, states, waiting in sorted(rows, key=lambda r: (r[0], r[1])):
        age = utcnow() - started
        table.add_row(incident_id, f"SEV-{sev}", service, f"{int(age.total_seconds() // 60)} min", states, waiting)
    out.print(table)


@app.command()
def timeline(incident_id: str) -> None:
    """Print one incident's timeline across all its runs, in UTC, to the second."""
    from sevflow.incident import incident_timeline

    entries = incident_timeline(incident_id)
    if not entries:
        _fail(f"No runs of incident {incident_id!r}: `sevflow incidents` lists them.", code=1)
    for entry in entries:
        who = f" ({entry.actor})" if entry.actor else ""
        typer.echo(f"{entry.at.strftime('%Y-%m-%d %H:%M:%S')} "
                   f"UTC  {entry.details.get('run_name', '')}  [{entry.kind}] {entry.description}{who}")


@app.command()
def postmortem(
    incident_id: str,
    out_file: str = typer.Option("", "--out", help="Write it to this file."),
    edit: bool = typer.Option(False, "--edit", help="Give the incident commander's parts (asked in turn unless "
                              "given as options), store them with the incident and re-publish its post-mortem."),
    as_: str = typer.Option("", "--as", help="With --edit: your name (the incident commander)."),
    root_cause: str | None = typer.Option(None, "--root-cause", help="With --edit: why it broke."),
    impact: str | None = typer.Option(None, "--impact", help="With --edit: who and what was affected."),
    prevention: str | None = typer.Option(None, "--prevention", help="With --edit: what will prevent it in future."),
    action: list[str] = typer.Option([], "--action", help='With --edit: an action item "what;owner;YYYY-MM-DD"; '
                                     "repeatable; given once or more, they replace the earlier list."),
    export: str = typer.Option("", "--export", help="Also write it to this folder as <incident>-postmortem.md."),
    export_s3: str = typer.Option("", "--export-s3", help="Also write it to the bucket of this S3 Bucket block "
                                  "(prefect-aws), as <prefix>/<incident>-postmortem.md."),
    s3_prefix: str = typer.Option("postmortems", "--s3-prefix", help="With --export-s3: the key prefix."),
) -> None:
    """The incident's post-mortem (the runbook's template) across all its runs, from the durable records,
    with the post-incident checklists and their evidence; --edit adds the incident commander's parts."""
    from sevflow.incident import artifact_key, edit_postmortem, incident_postmortem
    from sevflow.records import ActionItem

    given = any(v is not None for v in (root_cause, impact, prevention)) or bool(action) or bool(as_)
    if given and not edit:
        _fail("--as, --root-cause, --impact, --prevention and --action go with --edit.")
    if edit:
        if not given:
            if not sys.stdin.isatty():
                _fail("--edit without options asks its questions on a terminal: give --as, --root-cause, --impact, "
                      '--prevention and --action "what;owner;YYYY-MM-DD" instead.')
            as_ = typer.prompt("Your name (incident commander)")
            root_cause = typer.prompt("Root cause", default="", show_default=False)
            impact = typer.prompt("Impact (who and what was affected)", default="", show_default=False)
            prevention = typer.prompt("Prevention", default="", show_default=False)
            while True:
                text = typer.prompt('Action item "what;owner;YYYY-MM-DD" (empty to finish)', default="",
                                    show_default=False)
                if not text.strip():
                    break
                try:
                    ActionItem.parse(text)
                except ValueError as exc:
                    err.print(str(exc))
                    continue
                action.append(text)
        try:
            done = edit_postmortem(incident_id, as_, root_cause=root_cause, impact=impact, prevention=prevention,
                                   action_items=action or None)
        except (ValueError, LookupError) as exc:
            _fail(str(exc), code=1)
        missing = done.missing()
        out.print(f"Stored the post-mortem of {incident_id} by {done.by}"
                  + (f"; still missing: {', '.join(missing)}" if missing else "; complete"), highlight=False)
    try:
        text = incident_postmortem(incident_id)
    except LookupError as exc:
        _fail(str(exc), code=1)
    if export:
        folder = Path(export)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{artifact_key(incident_id)}-postmortem.md"
            target.write_text(text)
        except OSError as exc:
            _fail(f"cannot write to {export}: {exc}", code=1)
        out.print(f"Exported {target}", highlight=False)
    if export_s3:
        from sevflow.errors import ConfigurationError
        from sevflow.tasks.s3 import export_text

        try:
            address = export_text(export_s3, s3_prefix, f"{artifact_key(incident_id)}-postmortem.md", text)
        except ConfigurationError as exc:
            _fail(str(exc), code=1)
        out.print(f"Exported {address}", highlight=False)
    if out_file:
        Path(out_file).write_text(text)
        out.print(f"Wrote {out_file}")
    elif not edit and not export and not export_s3:
        typer.echo(text)


@app.command()
def escalate() -> None:
    """Run one pass of the escalation watcher now."""
    from sevflow.flows.approval_escalation import approval_escalation

    done = approval_escalation()
    out.print(done or "nothing due")


# --- scale-out: work pool, workers, shared result storage ---------------------------------


@app.command()
def deploy(
    host: list[str] = typer.Option([], "--host", help="Also make this host's queue (host-NAME); repeatable."),
) -> None:
    """Register every procedure on PREFECT_API_URL's server in the `sevflow` work pool
    (queues sev-1 … sev-4 in priority order, one per --host)."""
    import asyncio

    from sevflow.deployments import POOL, SEVERITY_QUEUES, deploy as run_deploy, host_queue

    done = asyncio.run(run_deploy(tuple(host)))
    queues = [*SEVERITY_QUEUES, *(host_queue(h) for h in host)]
    out.print(f"Work pool {POOL!r}, queues {', '.join(queues)} (priority in that order).")
    for name in done:
        out.print(f"  deployed {name}")
    out.print("Start workers with: sevflow worker   (on a host that must run its own procedures: "
              "sevflow worker --host NAME)")


@app.command()
def worker(
    host: str = typer.Option("", help="Run only this host's queue (host-NAME), for procedures that must "
                                      "run on the affected host."),
    limit: int = typer.Option(20, help="Most flow runs executing at once (waiting gates hold none)."),
    poll: float = typer.Option(0.2, help="Seconds between polls of the work pool."),
    escalation_interval: float = typer.Option(30.0, help="Seconds between looks for due escalations (a "
                                                        "watcher run starts only when one is due); 0: none."),
) -> None:
    """Pull runs from the `sevflow` work pool (a Prefect process worker with sevflow's fast start)."""
    from sevflow.worker import work

    work(host=host or None, limit=limit, query_seconds=poll, escalation_interval=escalation_interval or None)


@app.command()
def storage(
    bucket: str = typer.Option(..., help="S3 bucket every worker can reach."),
    folder: str = typer.Option("sevflow-results", help="Key prefix inside the bucket."),
    endpoint_url: str = typer.Option("", help="S3-compatible endpoint (MinIO, moto); empty: AWS."),
    region: str = typer.Option("", help="AWS region name."),
) -> None:
    """Save the `s3-bucket/sevflow-results` block: every worker then persists task results there,
    so a gate opened on one host can be resumed on another. Credentials come from the usual AWS
    chain (environment, profile, instance role) unless you edit the block's credentials in the UI."""
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    from sevflow.worker import RESULTS_BLOCK

    params = AwsClientParameters(endpoint_url=endpoint_url) if endpoint_url else AwsClientParameters()
    credentials = AwsCredentials(region_name=region or None, aws_client_parameters=params)
    S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=credentials).save(
        RESULTS_BLOCK.split("/", 1)[1], overwrite=True)
    out.print(f"Saved {RESULTS_BLOCK}: s3://{bucket}/{folder}. Restart workers to use it.")


# --- short run ids, worker liveness, status ---------------------------------------------

SHORT_ID = 8
WORKER_SILENCE_SECONDS = 15.0  # sevflow's workers poll every 0.2 s; a plain Prefect worker every 10 s


def short_id(run_id: object) -> str:
    """The last characters of a run id. Not the first: Prefect's ids are UUIDv7, whose first
    characters are a timestamp shared by every run created in the same minute."""
    return str(run_id)[-SHORT_ID:]


def resolve_run_id(text: str) -> str:
    """A full flow run id, from itself or from a short id (its last characters) of a run
    waiting at a gate or answered and not yet resumed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType

    text = text.strip().lower()
    if len(text) == 36 or not text:
        return text
    if len(text) < 6 or any(c not in "0123456789abcdef-" for c in text):
        _fail(f"{text!r} is neither a flow run id nor a short id (the last {SHORT_ID} characters of one)")
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED, StateType.SCHEDULED])),
            tags=FlowRunFilterTags(all_=["sevflow"])), limit=200)
    found = sorted({str(r.id) for r in runs if str(r.id).endswith(text)})
    if len(found) == 1:
        return found[0]
    if not found:
        _fail(f"no run waiting at a gate has an id ending in {text!r}: see `sevflow pending`", code=1)
    _fail(f"{text!r} names several runs ({', '.join(found)}): give more characters")
    return ""


def _seconds_since(when: Any) -> float | None:
    from datetime import datetime, timezone

    return None if when is None else (datetime.now(timezone.utc) - when).total_seconds()


def _no_worker_hint(flow_run_id: str) -> str | None:
    """None when a worker has asked for this run's work lately; else what to start, and where."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        from prefect.exceptions import ObjectNotFound

        try:
            run = client.read_flow_run(UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return None  # no such run: answer_gate says so, with the id
        if run.deployment_id is None:
            return None
        deployment = client.read_deployment(run.deployment_id)
        if deployment.work_pool_name and run.work_queue_id:
            polled = _seconds_since(client.read_work_queue(run.work_queue_id).last_polled)
            start = (f"sevflow worker --host {run.work_queue_name.removeprefix('host-')}"
                     if (run.work_queue_name or "").startswith("host-") else "sevflow worker")
            where = f"queue {run.work_queue_name} of work pool {deployment.work_pool_name}"
        else:
            polled = _seconds_since(deployment.last_polled)
            start, where = "sevflow serve (or sevflow up)", f"deployment {deployment.name}"
    if polled is not None and polled < WORKER_SILENCE_SECONDS:
        return None
    ago = "never" if polled is None else f"not for {polled:.0f} s"
    return (f"No worker is running for this run: {where} was polled {ago}. The answer is kept and acted on "
            f"when one starts: {start}")


@app.command()
def status(
    intake_url: str = typer.Option("", help="The intake's address (default: $SEVFLOW_INTAKE_URL or "
                                            "http://127.0.0.1:8787)."),
) -> None:
    """The server, the workers, the intake, the escalation watcher's last run, and runs answered
    but not yet resumed (no worker has taken them)."""
    import os

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from sevflow.deployments import POOL, procedures, watcher

    def ago(seconds: float | None) -> str:
        return "never" if seconds is None else f"{seconds:.0f} s ago"

    api = PREFECT_API_URL.value() or "(PREFECT_API_URL is not set)"
    with get_client(sync_client=True) as client:
        try:
            healthy = client.api_healthcheck() is None
            version = client.api_version()
        except Exception as exc:  # the one place a person looks when things are down
            out.print(f"Prefect server  {api}: not answering ({type(exc).__name__}). Start it: sevflow up", soft_wrap=True)
            raise typer.Exit(1) from None
        out.print(f"Prefect server  {api}: {'healthy' if healthy else 'unhealthy'}, version {version}", soft_wrap=True)

        out.print("Workers")
        try:
            client.read_work_pool(POOL)
        except ObjectNotFound:
            pass
        else:
            workers = client.read_workers_for_work_pool(POOL)
            online = [w for w in workers if str(getattr(w.status, "value", w.status)).upper() == "ONLINE"]
            out.print(f"  work pool {POOL}: {len(online)} online of {len(workers)}")
            for w in workers:
                state = str(getattr(w.status, "value", w.status)).lower()
                out.print(f"    {w.name}: {state}, last heartbeat {ago(_seconds_since(w.last_heartbeat_time))}",
                          soft_wrap=True)
            for q in sorted(client.read_work_queues(work_pool_name=POOL), key=lambda q: q.priority):
                out.print(f"    queue {q.name} (priority {q.priority}): polled {ago(_seconds_since(q.last_polled))}")
        names = [f.name for f in (*procedures().values(), watcher())]
        flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=names)))}
        served = [d for d in client.read_deployments() if d.flow_id in flows and not d.work_pool_name]
        for d in served:
            out.print(f"  served {flows[d.flow_id]}/{d.name}: polled {ago(_seconds_since(d.last_polled))}",
                      soft_wrap=True)
        if not served and not flows:
            out.print("  none: nothing is deployed (sevflow up, sevflow serve or sevflow deploy)")

        url = intake_url or os.environ.get("SEVFLOW_INTAKE_URL", "http://127.0.0.1:8787")
        try:
            health = httpx.get(f"{url.rstrip('/')}/healthz", timeout=3).json()
            summary = ", ".join(f"{k} {v}" for k, v in health.items() if isinstance(v, (int, float, str, bool)))
            out.print(f"Intake          {url}: answering ({summary})", soft_wrap=True)
        except (httpx.HTTPError, ValueError):
            out.print(f"Intake          {url}: not answering", soft_wrap=True)

        watcher_runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[watcher().name])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]))),
            sort=FlowRunSort.END_TIME_DESC, limit=1)
        if watcher_runs:
            last = watcher_runs[0]
            out.print(f"Watcher         last escalation run {ago(_seconds_since(last.end_time))}: "
                      f"{last.state.name if last.state else '?'} ({short_id(last.id)}); workers look every "
                      "--escalation-interval s and start one only when a tier is due", soft_wrap=True)
        else:
            out.print("Watcher         no escalation run yet (workers start one only when a tier is due)",
                      soft_wrap=True)

        waiting = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]),
                                     name=FlowRunFilterStateName(any_=["Resuming"])),
            tags=FlowRunFilterTags(all_=["sevflow"])), limit=200)
        deployments = {d.id: d for d in client.read_deployments(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[r.deployment_id for r in waiting if r.deployment_id])))} if waiting else {}
    out.print(f"Answered, not yet resumed: {len(waiting) or 'none'}")
    for run in waiting:
        flow = flows.get(run.flow_id, "?")
        queue = f" on queue {run.work_queue_name}" if run.work_queue_name and run.deployment_id in deployments \
            and deployments[run.deployment_id].work_pool_name else ""
        since = _seconds_since(run.state.timestamp if run.state else None)
        out.print(f"  {short_id(run.id)}  {flow}{queue}, answered {ago(since)}", soft_wrap=True)


def main() -> None:
    # Before Prefect is imported (it reads its settings then): a server `sevflow up --auth` locked.
    from sevflow.embedded import client_auth_from_state

    client_auth_from_state()
    try:
        app()
    except Exception as exc:
        if getattr(getattr(exc, "response", None), "status_code", None) == 401:
            err.print("[bold red]error:[/] The Prefect API refused sevflow (401 Unauthorized): it is locked with a "
                      "password. Set PREFECT_API_AUTH_STRING, or SEVFLOW_HOME to the state folder of the "
                      "`sevflow up --auth` that locked it (its api-auth file holds the password).", highlight=False)
            sys.exit(2)
        raise


if __name__ == "__main__":
    sys.exit(main())
