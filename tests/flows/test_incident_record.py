"""The incident record across runs: one timeline, a post-mortem from durable records, unchanged
after Prefect's events are gone. Real server (PostgreSQL), worker, repository and CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import httpx
import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

from sevflow.blocks import ApprovalPolicy
from sevflow.gate import AnswerRefused, answer_gate
from sevflow.incident import incident_artifact_key, incident_runs, incident_timeline
from tests.conftest import Service, start, wait_final, wait_paused
from tests.intake.conftest import TOKENS, save_sources
from tests.support.stack import PG_DSN, Intake
from tests.support.wait import until


def duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min {seconds % 60} s"


def sevflow(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sevflow", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ) | stack.env() | {"COLUMNS": "250"}, stdin=subprocess.DEVNULL)


def first_run_parameters(run_id: str) -> dict:
    with get_client(sync_client=True) as client:
        parameters = dict(client.read_flow_run(uuid.UUID(run_id)).parameters)
    parameters.pop("reason", None)
    return parameters


def incident_artifacts(incident: str) -> list[str]:
    """Every version of the incident's own post-mortem artifact, oldest first."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[incident_artifact_key(incident)])), sort=ArtifactSort.CREATED_DESC, limit=50)
    return [str(a.data) for a in reversed(found)]


def test_one_timeline_and_post_mortem_across_runs_that_outlive_the_events(service: Service, worker, stack,
                                                                          tmp_path, moto_s3, request) -> None:
    # The incident starts from an alert delivered to a real `sevflow intake`.
    save_sources("http://127.0.0.1:9")
    rules = f"""\
rules:
  - name: checkout
    match:
      labels: {{service: "{service.name}"}}
    procedure: application-rollback
    service_label: service
    severity: SEV-2
    parameters: {{policy: {service.policy}}}
"""
    intake = Intake(stack.env(), tmp_path / "intake", rules, answer_wait=5.0)
    intake.start()
    request.addfinalizer(intake.stop)
    # The follow-up comes a second after resolution here (24 h by default), and tells the
    # incident commander through the test's webhook receiver.
    policy = ApprovalPolicy.load(service.policy)
    policy.follow_up_seconds = 1.0
    policy.incident_commander_block = service._webhook_block()
    policy.save(service.policy, overwrite=True)

    since = (datetime.now(timezone.utc) - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    errors = {"id": f"errors-{service.name}", "group": "checkout", "summary": "checkout 5xx above 5%",
              "labels": {"service": service.name}, "starts_at": since}
    latency = {"id": f"latency-{service.name}", "group": "checkout", "summary": "checkout p99 above 2 s",
               "labels": {"service": service.name}, "starts_at": since}

    def send(alert: dict) -> dict:
        answer = httpx.post(f"{intake.url}/alerts/generic", json=alert, timeout=15,
                            headers={"Authorization": f"Bearer {TOKENS['generic']}"})
        assert answer.status_code < 300, answer.text
        return answer.json()["alerts"][0]

    def recorded(phrase: str) -> None:
        until(lambda: any(phrase in e.description for e in incident_timeline(incident)), 60, 0.3,
              what=f"the timeline entry {phrase!r}")

    fired = until(lambda: (a := send(errors))["flow_run_id"] and a, 60, what="the alert's run")
    incident, first = fired["incident_id"], fired["flow_run_id"]
    # First run (started by the alert): a second alert of the group joins, an ignored answer,
    # then a rejection with a reason.
    wait_paused(first)
    assert first_run_parameters(first) == {"service": service.name, "severity": "SEV-2", "incident_id": incident,
                                           "policy": service.policy}
    joined = send(latency)
    assert (joined["outcome"], joined["incident_id"]) == ("attached", incident)
    recorded("Alert firing (joined the incident)")
    with pytest.raises(AnswerRefused):
        answer_gate(first, "approve", "mallory", "let me <b>in</b>")
    wait_paused(first, gate_answer=2)
    answer_gate(first, "reject", "bob", "wait for the `db` team")
    assert wait_final(first).state.name == "Rejected"
    # The incident's artifact as the first run ended: its entries, nothing of a second run.
    versions = until(lambda: incident_artifacts(incident) or None, 30, what="the incident's artifact")
    assert "Rejected by bob" in versions[-1] and "Approved by alice" not in versions[-1]
    # A retry on the same incident; the second alert resolves while it waits; approved.
    second = start("application-rollback", service=service.name, policy=service.policy, incident_id=incident,
                   severity="SEV-2")
    wait_paused(second)
    settled = send(dict(latency, status="resolved"))
    assert (settled["outcome"], settled["incident_id"]) == ("resolved", incident)
    recorded("Alert resolved (resolved): checkout p99")
    answer_gate(second, "approve", "alice", "v2 was healthy")
    assert wait_final(second).state.type.value == "COMPLETED"
    # As the second run ended it re-published the incident's artifact: both runs' entries (the
    # version before the follow-up's, which adds its own line).
    versions = incident_artifacts(incident)
    at_end = [v for v in versions if "Approved by alice" in v and "Post-incident follow-up: post-mortem" not in v]
    assert at_end, versions
    assert all(p in at_end[-1] for p in ("Alert firing (opened the incident)", "Rejected by bob",
                                         "Procedure ended: rejected", "Approved by alice", "Procedure ended: resolved",
                                         "Alert resolved (resolved)")), at_end[-1]

    # The Post-Incident Follow-up, scheduled at resolution, finds the post-mortem incomplete
    # and tells the incident commander.
    follow_ups = until(lambda: [r for r in incident_runs(incident) if "sevflow-follow-up" in r.tags], 60, 0.5,
                       what="the follow-up run")
    assert len(follow_ups) == 1 and follow_ups[0].parameters == {"incident_id": incident, "policy": service.policy}
    assert wait_final(str(follow_ups[0].id), 120).state.type.value == "COMPLETED"
    (told,) = [r["body"] for r in service.receiver.received if incident in r["body"].get("subject", "")]
    assert told["subject"] == f"[SEV-2] Post-incident follow-up for {incident} ({service.name}): post-mortem incomplete"
    assert "- root cause\n- impact\n- prevention\n- action items" in told["body"]
    assert f"sevflow postmortem {incident} --edit" in told["body"]
    # The follow-up published the incident's post-mortem (all its runs), incomplete as it is.
    with get_client(sync_client=True) as client:
        (published,) = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[f"{incident}-incident-postmortem"])))
    assert "Missing from the incident commander: root cause, impact, prevention, action items" in published.data
    # It names the procedure its runs ran (both were application rollbacks), not the runs' generated names.
    assert f"procedure `application-rollback` · service `{service.name}`" in published.data, published.data[:600]
    # A late alert: the first alert's resolution, after every run ended, joins the same incident.
    late = send(dict(errors, status="resolved"))
    assert (late["outcome"], late["incident_id"]) == ("resolved", incident)
    recorded("Alert resolved (resolved): checkout 5xx")

    listed = sevflow(stack, "incidents")
    assert listed.returncode == 0 and incident in listed.stdout

    timeline = sevflow(stack, "timeline", incident)
    assert timeline.returncode == 0, timeline.stderr
    lines = timeline.stdout.splitlines()
    stamps = [line[:19] for line in lines]
    assert stamps == sorted(stamps) and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", s) for s in stamps)
    text = timeline.stdout
    phrases = ["[alert] Alert firing (opened the incident): checkout 5xx above 5%", "application-rollback started for",
               "[alert] Alert firing (joined the incident): checkout p99 above 2 s", "may not approve",
               "Rejected by bob", "Procedure ended: rejected", "[alert] Alert resolved (resolved): checkout p99",
               "Approved by alice", "Step 'deploy' completed", "Procedure ended: resolved",
               "Post-incident follow-up scheduled for",
               "Post-incident follow-up: post-mortem incomplete (root cause; impact; prevention; action items); "
               "told the incident commander via custom-webhook/hook-",
               "[alert] Alert resolved (resolved): checkout 5xx above 5%"]
    assert all(p in text for p in phrases), text
    order = [text.index(p) for p in phrases]
    assert order == sorted(order)
    assert len({line.split("  ")[1] for line in lines}) == 3  # entries of both runs and the follow-up

    postmortem = sevflow(stack, "postmortem", incident)
    assert postmortem.returncode == 0, postmortem.stderr
    md = postmortem.stdout
    assert "Rejected by bob: wait for the \\`db\\` team" in md and "reason: “v2 was healthy”" in md
    assert "&lt;b&gt;in&lt;/b&gt;" in md and "<b>" not in md
    # The response is the first answer that decided something (bob's rejection), not mallory's.
    rejected_at = next(line for line in lines if "Rejected by bob" in line)[11:19]
    assert f"to first response ({rejected_at} UTC)" in md

    # Figures, each computed from the entries the timeline printed (to the second).
    def when(phrase: str, nth: int = 0) -> datetime:
        return datetime.strptime([line for line in lines if phrase in line][nth][:19], "%Y-%m-%d %H:%M:%S")

    def spans(a: datetime, b: datetime) -> list[str]:
        # The timeline shows whole seconds: the exact span is the shown one or one second less.
        return [duration(int((b - a).total_seconds()) - d) for d in (0, 1)]

    assert lines[0].split("] ", 1)[1].startswith("Alert firing (opened the incident)"), lines[0]
    assert lines[-1].split("] ", 1)[1].startswith("Alert resolved (resolved): checkout 5xx"), lines[-1]
    detected = when("Alert firing (opened the incident)")
    assert f"- **Detected:** {detected:%Y-%m-%d %H:%M:%S} — Alert firing (opened the incident): checkout 5xx" in md
    acknowledged = next(line for line in md.splitlines() if line.startswith("- **Time to acknowledge:**"))
    assert any(f"{span} ({rejected_at} UTC, “Rejected by bob" in acknowledged
               for span in spans(detected, when("Rejected by bob"))), acknowledged
    mitigated = next(line for line in md.splitlines() if line.startswith("- **Time to mitigate:**"))
    deployed = when("Step 'deploy' completed")
    assert any(f"{span} ({deployed:%H:%M:%S} UTC" in mitigated for span in spans(detected, deployed)), mitigated
    resolved = next(line for line in md.splitlines() if line.startswith("- **Time to resolve:**"))
    assert any(f"{span} ({when('Procedure ended: resolved'):%H:%M:%S} UTC" in resolved
               for span in spans(detected, when("Procedure ended: resolved"))), resolved
    gates = [line for line in md.splitlines() if line.startswith("- **Gate `")]
    assert len(gates) == 2 and "rejected" in gates[0] and "approved" in gates[1], gates
    assert any(f"after waiting {span}" in gates[0]
               for span in spans(when("Approval requested", 0), when("Rejected by bob"))), gates[0]
    assert any(f"after waiting {span}" in gates[1]
               for span in spans(when("Approval requested", 1), when("Approved by alice"))), gates[1]
    assert "mallory answered approve → ignored" in md and "bob answered reject → rejected" in md

    # Prefect keeps events 7 days: with every event gone, the record reads the same.
    with psycopg.connect(PG_DSN.rsplit("/", 1)[0] + f"/{stack.database}", autocommit=True) as conn:
        conn.execute("DELETE FROM event_resources")
        deleted = conn.execute("DELETE FROM events").rowcount
    assert deleted > 0
    assert sevflow(stack, "timeline", incident).stdout == timeline.stdout
    again = sevflow(stack, "postmortem", incident).stdout
    assert again == md

    # Checklists: ticked with the evidence from the record, the rest open.
    checks = dict(re.findall(r"^- \[[ x]\] (.+?)(?: — (.*))?$", md.split("## Post-Incident", 1)[1], re.M))
    assert checks["Immediate fix applied"].startswith("evidence: ") and "Step 'deploy' completed" in checks["Immediate fix applied"]
    assert "Procedure ended: resolved" in checks["System verified working"]
    assert checks["Root cause identified"] == checks["Full post-mortem written"] == ""
    assert "Missing from the incident commander: root cause, impact, prevention, action items" in md

    # The incident commander's parts: bad input is refused and changes nothing.
    bad = sevflow(stack, "postmortem", incident, "--edit", "--as", "carol", "--action", "fix it;bob;next week")
    assert bad.returncode == 1 and "is not YYYY-MM-DD" in bad.stderr
    assert sevflow(stack, "postmortem", incident).stdout == md
    export = tmp_path / "export"
    s3 = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    bucket, bucket_block = f"pm-{incident}", f"pm-{incident}"
    s3.create_bucket(Bucket=bucket)
    S3Bucket(bucket_name=bucket, credentials=AwsCredentials(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_s3))).save(bucket_block, overwrite=True)
    no_bucket = sevflow(stack, "postmortem", incident, "--export-s3", "no-such-bucket-block")
    assert no_bucket.returncode == 1 and "No S3 Bucket block named 'no-such-bucket-block'" in no_bucket.stderr
    edited = sevflow(stack, "postmortem", incident, "--edit", "--as", "carol", "--root-cause", "v3 dropped the <pool>",
                     "--impact", "Checkout failed for 2 min", "--prevention", "Pool size check in CI",
                     "--action", "Add pool check;bob;2030-01-08", "--export", str(export),
                     "--export-s3", bucket_block, "--s3-prefix", "incidents/pm")
    assert edited.returncode == 0, edited.stderr
    assert "complete" in edited.stdout
    final = (export / f"{incident}-postmortem.md").read_text()
    stored = s3.get_object(Bucket=bucket, Key=f"incidents/pm/{incident}-postmortem.md")["Body"].read().decode()
    assert stored == final and f"s3://{bucket}/incidents/pm/{incident}-postmortem.md" in edited.stdout
    assert "## Root Cause\nv3 dropped the &lt;pool&gt;" in final and "**Impact:** Checkout failed for 2 min" in final
    assert "## Action Items\n- [ ] Add pool check - bob - 2030-01-08" in final and "Incomplete" not in final
    checks = dict(re.findall(r"^- \[[ x]\] (.+?)(?: — (.*))?$", final.split("## Post-Incident", 1)[1], re.M))
    assert checks["Full post-mortem written"].startswith("evidence: post-mortem edited by carol at ")
    assert checks["Action items identified"].startswith("evidence: 1 with owner and due date")
    assert "Post-mortem edited by carol; complete (carol)" in sevflow(stack, "timeline", incident).stdout
    # Re-published as the incident's artifact, and stored past the events.
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(
                any_=[f"{incident}-incident-postmortem"])))
    assert [a.data for a in artifact] == [final]
    assert sevflow(stack, "postmortem", incident).stdout.rstrip("\n") == final.rstrip("\n")

    missing = sevflow(stack, "timeline", "inc-nothing")
    assert missing.returncode == 1 and "No runs of incident 'inc-nothing'" in missing.stderr
