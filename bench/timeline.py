"""An incident's record: sevflow's timeline and post-mortem against reading the same records raw.

    ./dev bench bench/timeline.py [--entries 5000] [--runs 5] [--rounds 5]

On demand only (not a test). Starts a Prefect server on its own fresh PostgreSQL database
(tests.support.stack.PrefectServer, dropped at the end), makes one incident of `--runs` runs
(tagged `incident:<id>`, `sev:2`, `service:bench`) holding `--entries` durable timeline
records between them (alerts, approval requests, answers counted/ignored/rejected, pages,
steps, milestones, as the procedures write them), then, after one warm-up pass of each,
times `--rounds` alternating passes of:

  raw       for each run, one POST /flow_runs/<id>/input/filter for every `sevflow-record-`
            key (no paging) and `json.loads` of each value: the least any reader does
  sevflow   `sevflow.incident.incident_postmortem(<id>)`: reads the runs, their records
            (paged, 200 a request) and states, merges and deduplicates the timeline, computes
            the figures and checklists, renders the post-mortem (what `sevflow postmortem` prints)

and prints the median of each, the ratio sevflow/raw, and the pure rendering alone (the
entries already in memory: `render_postmortem` + `render_checklists`).

Measured on this 2-core machine (2026-12-03, load average about 8 from two other engineers'
test suites), 5,000 entries in 5 runs, 3 rounds: raw read 2.87 s, sevflow 6.69 s (post-mortem
679 KiB), render only 0.70 s (0.30 s alone on the same machine a minute later); ratio sevflow/raw
2.33. The difference is mostly reading: sevflow pages each run's records 200 at a time
(`read_records`, with the keys already read excluded) and reads each run's states, where raw
asks once per run for everything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import httpx  # noqa: E402

from sevflow.models import RECORD_PREFIX, Severity, TimelineEntry, utcnow  # noqa: E402
from tests.support.stack import PrefectServer  # noqa: E402


def entries_for(run_index: int, count: int, start: object) -> list[tuple[str, TimelineEntry]]:
    """`count` records of one run, shaped as gate, intake and step records are."""
    out: list[tuple[str, TimelineEntry]] = []
    for i in range(count):
        at = start + timedelta(seconds=run_index * 10_000 + i)  # type: ignore[operator]
        gate = {"gate": f"gate-{i // 10}"}
        kind = i % 10
        if kind == 0:
            entry = TimelineEntry(at=at, source="sevflow", kind="approval", details=gate,
                                  description=f"Approval requested: roll back web to <v{i}> (plan abc{i})")
        elif kind == 1:
            entry = TimelineEntry(at=at, source="sevflow", kind="escalation", details={**gate, "tier": 0},
                                  description="Notified primary on-call (alice, bob)")
        elif kind == 2:
            entry = TimelineEntry(at=at, source="approver", kind="approval", actor="mallory",
                                  details={**gate, "decision": "approve", "verdict": "ignored", "reason": "me *too*"},
                                  description="'mallory' may not answer this: recorded and ignored.")
        elif kind == 3:
            entry = TimelineEntry(at=at, source="approver", kind="approval", actor="bob",
                                  details={**gate, "decision": "reject", "verdict": "rejected", "reason": "wait `db`"},
                                  description="Rejected by bob: wait `db`")
        elif kind == 4:
            entry = TimelineEntry(at=at, source="alertmanager", kind="alert",
                                  details={"outcome": "duplicate" if i else "started", "event": "firing"},
                                  description=f"Alert firing (repeated): web 5xx rate {i}%")
        elif kind == 5:
            entry = TimelineEntry(at=at, source="approver", kind="approval", actor="alice",
                                  details={**gate, "decision": "approve", "verdict": "counted", "reason": "ok"},
                                  description="Approved by alice (1 of 1).")
        elif kind == 6:
            entry = TimelineEntry(at=at, source="prefect", kind="step", details={"milestone": "Fix deployed"},
                                  description="Step 'deploy' completed")
        else:
            entry = TimelineEntry(at=at, source="prefect", kind="step", description=f"Step 'verify health {i}' completed")
        out.append((f"{RECORD_PREFIX}bench-{i:06d}", entry))
    return out


def make_incident(client: httpx.Client, incident: str, runs: int, entries: int) -> list[str]:
    flow = client.post("/flows/", json={"name": "bench-incident"}).raise_for_status().json()
    start = utcnow() - timedelta(days=1)
    ids = []
    for r in range(runs):
        run = client.post("/flow_runs/", json={
            "flow_id": flow["id"], "name": f"bench-run-{r}",
            "tags": ["sevflow", f"incident:{incident}", "sev:2", "service:bench"],
            "state": {"type": "COMPLETED", "name": "Completed"},
        }).raise_for_status().json()
        ids.append(run["id"])
        for key, entry in entries_for(r, entries // runs, start):
            client.post(f"/flow_runs/{run['id']}/input", json={"key": key, "value": entry.model_dump_json()}
                        ).raise_for_status()
    return ids


def read_raw(client: httpx.Client, run_ids: list[str]) -> int:
    found = 0
    for run_id in run_ids:
        rows = client.post(f"/flow_runs/{run_id}/input/filter",
                           json={"prefix": RECORD_PREFIX, "limit": 1_000_000, "exclude_keys": []}).raise_for_status().json()
        found += len([json.loads(row["value"]) for row in rows])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    from sevflow import records
    from sevflow.incident import incident_postmortem, incident_timeline

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-timeline-") as root:
        home = Path(root) / "prefect-home"
        home.mkdir()
        server = PrefectServer(home)
        stack.callback(server.stop)
        print(f"starting Prefect server on 127.0.0.1:{server.port} (database {server.database}) ...", flush=True)
        server.start()
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url,
                                                        PREFECT_SERVER_ANALYTICS_ENABLED: False}))
        client = stack.enter_context(httpx.Client(base_url=server.api_url, timeout=120))
        incident = f"inc-bench-{uuid.uuid4().hex[:8]}"
        print(f"writing {args.entries} records over {args.runs} runs ...", flush=True)
        run_ids = make_incident(client, incident, args.runs, args.entries)

        assert read_raw(client, run_ids) == args.entries
        timeline = incident_timeline(incident)
        assert len(timeline) == args.entries, len(timeline)
        text = incident_postmortem(incident)  # warm-up of both
        raw_times, sevflow_times, render_times = [], [], []
        for i in range(args.rounds):
            started = time.perf_counter()
            read_raw(client, run_ids)
            raw_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            again = incident_postmortem(incident)
            sevflow_times.append(time.perf_counter() - started)
            facts = records.PostmortemFacts(
                incident_id=incident, procedure="bench", service="bench", severity=Severity.SEV2,
                started_at=timeline[0].at, ended_at=timeline[-1].at, outcome="resolved", timeline=timeline)
            started = time.perf_counter()
            records.render_postmortem(facts) + records.render_checklists(facts, now=utcnow())
            render_times.append(time.perf_counter() - started)
            print(f"  round {i + 1}/{args.rounds}: raw {raw_times[-1]:.3f} s, sevflow {sevflow_times[-1]:.3f} s, "
                  f"render only {render_times[-1]:.3f} s", flush=True)
        assert again.count("\n") > args.entries and again.split("## Post-Incident")[0] == text.split("## Post-Incident")[0]
        raw, ours, render = (statistics.median(t) for t in (raw_times, sevflow_times, render_times))
        print(f"{args.entries} entries in {args.runs} runs, {args.rounds} rounds (medians):")
        print(f"  raw read       {raw:.3f} s")
        print(f"  sevflow        {ours:.3f} s   (post-mortem {len(text) // 1024} KiB)")
        print(f"  render only    {render:.3f} s")
        print(f"  ratio sevflow/raw: {ours / raw:.2f}")


if __name__ == "__main__":
    main()
