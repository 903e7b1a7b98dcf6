"""Security Breach on AWS, against moto's AWS server (started once per session, loopback only).

Real Prefect server and worker; the worker's steps reach moto through the prefect-aws
AwsCredentials block's endpoint. Every test reads the resulting AWS state back: keys, network
ACL entries, network interfaces, snapshots, locked evidence objects. A rejected gate is
checked against a full describe/list snapshot of the account taken while the gate waited.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from sevflow.gate import answer_gate
from tests.conftest import WEBHOOK_TOKEN, read_run, start, wait_final
from tests.support.services import WebhookReceiver
from tests.support.wait import until

REGION = "eu-west-1"
GATES = ("disable-keys", "block-ips", "isolate", "remediate")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    # One line per request (and a traceback per unimplemented call) would drown a failure's output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class Account:
    """One breached AWS account on moto for one test: a compromised user key and a bystander's
    key, a VPC with a network ACL, an instance with two network interfaces and two volumes, an
    isolation group with no rules, a log group, a WAF IP set, an Object Lock evidence bucket; and
    the sevflow blocks that point at it."""

    def __init__(self, moto_url: str, root: Path, receiver: WebhookReceiver) -> None:
        sfx = uuid.uuid4().hex[:8]
        self.sfx = sfx
        self.kw = dict(endpoint_url=moto_url, region_name=REGION, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
        iam, ec2, s3, logs, waf = (self.client(s) for s in ("iam", "ec2", "s3", "logs", "wafv2"))
        self.user, self.bystander = f"mallory-{sfx}", f"alice-{sfx}"
        iam.create_user(UserName=self.user)
        iam.create_user(UserName=self.bystander)
        self.key = iam.create_access_key(UserName=self.user)["AccessKey"]["AccessKeyId"]
        self.bystander_key = iam.create_access_key(UserName=self.bystander)["AccessKey"]["AccessKeyId"]

        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        self.acl = ec2.create_network_acl(VpcId=vpc)["NetworkAcl"]["NetworkAclId"]
        ec2.create_network_acl_entry(NetworkAclId=self.acl, RuleNumber=100, Protocol="-1", RuleAction="allow",
                                     Egress=False, CidrBlock="0.0.0.0/0")
        ec2.create_network_acl_entry(NetworkAclId=self.acl, RuleNumber=100, Protocol="-1", RuleAction="allow",
                                     Egress=True, CidrBlock="0.0.0.0/0")
        ec2.create_network_acl_entry(NetworkAclId=self.acl, RuleNumber=10, Protocol="-1", RuleAction="deny",
                                     Egress=False, CidrBlock="192.0.2.99/32")  # taken: the plan must skip 10
        self.app_group = ec2.create_security_group(GroupName=f"app-{sfx}", Description="app", VpcId=vpc)["GroupId"]
        self.admin_group = ec2.create_security_group(GroupName=f"admin-{sfx}", Description="admin", VpcId=vpc)["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=self.app_group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        self.isolation = ec2.create_security_group(GroupName=f"isolation-{sfx}", Description="nothing",
                                                   VpcId=vpc)["GroupId"]
        egress = ec2.describe_security_groups(GroupIds=[self.isolation])["SecurityGroups"][0]["IpPermissionsEgress"]
        ec2.revoke_security_group_egress(GroupId=self.isolation, IpPermissions=egress)
        # Groups on the interfaces (as on AWS), not on the instance: moto would add instance-level groups
        # to every interface's list, which real EC2 does not.
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, NetworkInterfaces=[
            {"DeviceIndex": 0, "SubnetId": subnet, "Groups": [self.app_group, self.admin_group]},
            {"DeviceIndex": 1, "SubnetId": subnet, "Groups": [self.app_group]},
        ])["Instances"][0]
        self.instance = instance["InstanceId"]
        data = ec2.create_volume(AvailabilityZone=instance["Placement"]["AvailabilityZone"], Size=4)["VolumeId"]
        ec2.attach_volume(VolumeId=data, InstanceId=self.instance, Device="/dev/sdf")

        self.log_group = f"/sevflow-test/{sfx}/web"
        logs.create_log_group(logGroupName=self.log_group)
        logs.create_log_stream(logGroupName=self.log_group, logStreamName="web-1")
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        logs.put_log_events(logGroupName=self.log_group, logStreamName="web-1", logEvents=[
            {"timestamp": now - 2000, "message": "GET /admin 200 from 203.0.113.7"},
            {"timestamp": now - 1000, "message": "POST /export 200 from 203.0.113.7"},
        ])
        self.ip_set = waf.create_ip_set(Name=f"suspects-{sfx}", Scope="REGIONAL", IPAddressVersion="IPV4",
                                        Addresses=["192.0.2.1/32"])["Summary"]
        self.bucket = f"evidence-{sfx}"
        s3.create_bucket(Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": REGION},
                         ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(Bucket=self.bucket, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})

        self.patched = root / "patched.log"
        self.name, self.credentials, self.policy = f"acct-{sfx}", f"aws-{sfx}", f"policy-{sfx}"
        self.hook = f"hook-{sfx}"
        self.receiver = receiver
        self.save(moto_url)

    def client(self, service: str) -> Any:
        return boto3.client(service, **self.kw)

    def save(self, moto_url: str, **overrides: Any) -> None:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock
        from prefect_aws import AwsCredentials
        from prefect_aws.client_parameters import AwsClientParameters

        from sevflow.blocks import ApprovalPolicy, ApprovalRule, AwsAccountTarget

        AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION,
                       aws_client_parameters=AwsClientParameters(endpoint_url=moto_url)).save(self.credentials, overwrite=True)
        CustomWebhookNotificationBlock(
            name="sevflow-test", url=f"{self.receiver.url}/notify",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            headers={"Authorization": "Bearer {{token}}"}, secrets={"token": WEBHOOK_TOKEN}, allow_private_urls=True,
        ).save(self.hook, overwrite=True)
        ApprovalPolicy(rules=[ApprovalRule(change_kind="*", approvers=["alice", "bob"])]).save(self.policy, overwrite=True)
        fields = dict(
            account=f"prod-{self.sfx}", region=REGION, credentials_block=self.credentials, evidence_bucket=self.bucket,
            evidence_retention_days=1, network_acl_id=self.acl, waf_ip_set_name=self.ip_set["Name"],
            waf_ip_set_id=self.ip_set["Id"], isolation_group_id=self.isolation,
            patch_command=f"echo patched >> {self.patched}", patch_cwd=str(self.patched.parent),
            log_groups=[self.log_group], notify=[f"custom-webhook/{self.hook}"], approval_policy=self.policy,
        ) | overrides
        AwsAccountTarget(**fields).save(self.name, overwrite=True)

    def parameters(self) -> dict[str, Any]:
        return dict(service=self.name, access_key_ids=[self.key], suspicious_ips=["203.0.113.7", "198.51.100.0/24"],
                    instance_ids=[self.instance], reason="GuardDuty: credential exfiltration")

    # --- reading the account back --------------------------------------------------------

    def world(self) -> dict[str, Any]:
        """Everything the procedure could change, as full describe/list output."""
        iam, ec2, s3, logs, waf = (self.client(s) for s in ("iam", "ec2", "s3", "logs", "wafv2"))
        users = iam.list_users()["Users"]
        return _clean({
            "users": users,
            "keys": {u["UserName"]: iam.list_access_keys(UserName=u["UserName"])["AccessKeyMetadata"] for u in users},
            "acls": ec2.describe_network_acls()["NetworkAcls"],
            "interfaces": ec2.describe_network_interfaces()["NetworkInterfaces"],
            "groups": ec2.describe_security_groups()["SecurityGroups"],
            "instances": ec2.describe_instances()["Reservations"],
            "volumes": ec2.describe_volumes()["Volumes"],
            "snapshots": ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"],
            "evidence": s3.list_object_versions(Bucket=self.bucket),
            "buckets": s3.list_buckets()["Buckets"],
            "ip_set": waf.get_ip_set(Name=self.ip_set["Name"], Id=self.ip_set["Id"], Scope="REGIONAL"),
            "log_groups": logs.describe_log_groups()["logGroups"],
        })

    def key_status(self, user: str, key: str) -> str | None:
        keys = self.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        return next((k["Status"] for k in keys if k["AccessKeyId"] == key), None)

    def interfaces(self) -> dict[str, list[str]]:
        found = self.client("ec2").describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [self.instance]}])["NetworkInterfaces"]
        return {n["NetworkInterfaceId"]: sorted(g["GroupId"] for g in n["Groups"]) for n in found}

    def volumes(self) -> list[str]:
        inst = self.client("ec2").describe_instances(InstanceIds=[self.instance])["Reservations"][0]["Instances"][0]
        return sorted(m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"])


def _clean(value: Any) -> Any:
    """Drop what differs between two identical reads (request ids, HTTP headers)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@pytest.fixture
def account(moto_url: str, tmp_path: Path, stack, receiver: WebhookReceiver) -> Account:
    return Account(moto_url, tmp_path, receiver)


# --- driving a run ------------------------------------------------------------------------


def at_gate(run_id: str, gate: str) -> Any:
    """Until the run waits at `gate` (fails if it ends first)."""
    def check() -> Any:
        run = read_run(run_id)
        state = run.state
        if state and state.is_final():
            raise AssertionError(f"run ended before gate {gate}: {state.name} {state.message}")
        if state and state.type.value == "PAUSED" and str(state.state_details.pause_key) == f"{gate}-answer-1":
            return run
        return None
    return until(check, timeout=120, what=f"the run to wait at gate {gate}")


def request(run_id: str, gate: str) -> dict[str, Any]:
    from sevflow.tasks.orchestrator import read_record

    return read_record(run_id, f"sevflow-gate-{gate}-request")


def artifact(key_suffix: str, run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    # the run's own, not the incident's (`<incident>-incident-postmortem`, which the run publishes too)
    [hit] = [a for a in found if (a.key or "").endswith(key_suffix) and not (a.key or "").endswith(f"-incident{key_suffix}")]
    return str(hit.data)


# --- tests --------------------------------------------------------------------------------


def test_a_breach_is_contained_its_evidence_locked_and_the_keys_rotated(account: Account, worker) -> None:
    before = account.world()
    interfaces_before = account.interfaces()
    run_id = start("security-breach", **account.parameters())

    # Humans hear of it at once, before anything is asked or changed.
    first = until(lambda: [r for r in account.receiver.received if "SECURITY BREACH" in r["body"]["subject"]],
                  what="the first breach alert")
    assert account.key in first[0]["body"]["body"] and "203.0.113.7/32" in first[0]["body"]["body"]

    at_gate(run_id, "disable-keys")
    plan = request(run_id, "disable-keys")["plan"]
    assert plan["operations"] == [{"op": "disable-access-key", "aws": plan["operations"][0]["aws"], "user": account.user,
                                   "access_key_id": account.key, "prior_status": "Active"}]
    assert account.world() == before  # asking changed nothing
    answer_gate(run_id, "approve", "alice", "contain")

    at_gate(run_id, "block-ips")
    assert account.key_status(account.user, account.key) == "Inactive"
    assert account.key_status(account.bystander, account.bystander_key) == "Active"
    answer_gate(run_id, "approve", "alice", "block")

    at_gate(run_id, "isolate")
    isolate_plan = request(run_id, "isolate")["plan"]
    [op] = isolate_plan["operations"]
    assert {i["network_interface_id"]: i["groups"] for i in op["interfaces"]} == interfaces_before  # prior state
    answer_gate(run_id, "approve", "alice", "isolate")

    at_gate(run_id, "remediate")
    # CONTAIN, read back: the key is inactive, the ACL denies both networks both ways at free
    # numbers below the allow rule, the WAF IP set holds them, every interface has only the isolation group.
    assert account.key_status(account.user, account.key) == "Inactive"
    acl = account.client("ec2").describe_network_acls(NetworkAclIds=[account.acl])["NetworkAcls"][0]["Entries"]
    denies = sorted((e["RuleNumber"], e["Egress"], e["CidrBlock"]) for e in acl if e["RuleAction"] == "deny")
    assert denies == [(10, False, "192.0.2.99/32"), (10, True, "198.51.100.0/24"), (11, False, "198.51.100.0/24"),
                      (11, True, "203.0.113.7/32"), (12, False, "203.0.113.7/32")]
    ip_set = account.client("wafv2").get_ip_set(Name=account.ip_set["Name"], Id=account.ip_set["Id"], Scope="REGIONAL")
    assert sorted(ip_set["IPSet"]["Addresses"]) == ["192.0.2.1/32", "198.51.100.0/24", "203.0.113.7/32"]
    assert account.interfaces() == {eni: [account.isolation] for eni in interfaces_before}

    # PRESERVE, read back: a snapshot of every volume; every evidence object locked in compliance
    # mode with the checksum the manifest gives; a delete of evidence refused.
    ec2, s3 = account.client("ec2"), account.client("s3")
    incident = next(t for t in read_run(run_id).tags if t.startswith("incident:")).split(":", 1)[1]
    snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag:sevflow-incident", "Values": [incident]}])
    assert sorted(s["VolumeId"] for s in snaps["Snapshots"]) == account.volumes() and len(account.volumes()) == 2
    manifest_obj = s3.get_object(Bucket=account.bucket, Key=f"{incident}/manifest.json")
    manifest_raw = manifest_obj["Body"].read()
    manifest = json.loads(manifest_raw)
    assert manifest_obj["ObjectLockMode"] == "COMPLIANCE"
    assert manifest["snapshots"] == {s["VolumeId"]: s["SnapshotId"] for s in snaps["Snapshots"]}
    keys = sorted(o["key"] for o in manifest["objects"])
    assert keys == [f"{incident}/logs/sevflow-test_{account.sfx}_web.jsonl", f"{incident}/state-before-containment.json"]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=account.bucket, Key=f"{incident}/manifest.json", VersionId=manifest_obj["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    for entry in manifest["objects"]:
        got = s3.get_object(Bucket=account.bucket, Key=entry["key"], ChecksumMode="ENABLED")
        body = got["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert base64.b64decode(got["ChecksumSHA256"]).hex() == entry["sha256"]  # S3's own SHA-256 agrees
        assert got["ObjectLockMode"] == "COMPLIANCE" and got["ObjectLockRetainUntilDate"] > datetime.now(timezone.utc)
        with pytest.raises(ClientError) as refused:
            s3.delete_object(Bucket=account.bucket, Key=entry["key"], VersionId=got["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    logs = [json.loads(line) for line in s3.get_object(Bucket=account.bucket, Key=keys[0])["Body"].read().splitlines()]
    assert [e["message"] for e in logs] == ["GET /admin 200 from 203.0.113.7", "POST /export 200 from 203.0.113.7"]
    state = json.loads(s3.get_object(Bucket=account.bucket, Key=keys[1])["Body"].read())
    assert set(state["plans"]) == {"disable-keys", "block-ips", "isolate"}

    # NOTIFY after assessing: the scope and where the evidence is.
    second = until(lambda: [r for r in account.receiver.received if "scope assessed" in r["body"]["subject"]],
                   what="the alert with the scope")
    assert "Exposure window" in second[0]["body"]["body"] and account.bucket in second[0]["body"]["body"]

    remediate = request(run_id, "remediate")["plan"]
    assert [o["op"] for o in remediate["operations"]] == ["rotate-access-key", "patch-command"]
    assert remediate["operations"][0]["old_status"] == "Inactive"
    answer_gate(run_id, "approve", "alice", "rotate and patch")
    final = wait_final(run_id, timeout=120)
    assert final.state.type.value == "COMPLETED", final.state.message

    # REMEDIATE, read back: the old key is gone, the owner has one new active key, saved in the
    # AwsCredentials block the plan named (and it works); the patch ran once.
    from prefect_aws import AwsCredentials

    owner_keys = account.client("iam").list_access_keys(UserName=account.user)["AccessKeyMetadata"]
    assert [k["Status"] for k in owner_keys] == ["Active"] and owner_keys[0]["AccessKeyId"] != account.key
    saved = AwsCredentials.load(remediate["operations"][0]["new_credentials_block"])
    assert saved.aws_access_key_id == owner_keys[0]["AccessKeyId"]
    assert account.key_status(account.bystander, account.bystander_key) == "Active"
    assert account.patched.read_text() == "patched\n"

    # DOCUMENT: the post-mortem has the actions with their prior state, legal, lessons learned.
    postmortem = artifact("-postmortem", run_id)
    for section in ("## Actions Taken (with prior state)", "## Legal and Compliance", "## Lessons Learned",
                    "## Evidence", "## Scope"):
        assert section in postmortem, section
    assert account.app_group in postmortem and account.admin_group in postmortem  # the groups it had
    assert hashlib.sha256(manifest_raw).hexdigest() in postmortem
    assert "**Not known:**" in postmortem  # moto's server has no CloudTrail LookupEvents: the record says so
    review = artifact("-access-log-review", run_id)
    assert account.key in review and "No cloudtrail record" in review


@pytest.mark.parametrize("gate", GATES)
def test_a_rejection_at_any_gate_leaves_the_account_as_it_was(gate: str, account: Account, worker) -> None:
    before_run = account.world()
    run_id = start("security-breach", **account.parameters())
    for earlier in GATES[:GATES.index(gate)]:
        at_gate(run_id, earlier)
        answer_gate(run_id, "approve", "alice", "go on")
    at_gate(run_id, gate)
    before = account.world()
    if gate == GATES[0]:
        assert before == before_run  # nothing before the first gate changes the account
    answer_gate(run_id, "reject", "bob", "not this")
    final = wait_final(run_id, timeout=120)
    assert final.state.name == "Rejected", final.state.message
    assert account.world() == before
    assert not account.patched.exists()


def test_a_dry_run_shows_every_plan_and_changes_nothing(account: Account, stack) -> None:
    before = account.world()
    env = dict(os.environ) | stack.env()
    params = account.parameters()
    args = [sys.executable, "-m", "sevflow", "plan", "security-breach", "--json",
            "--param", f"service={params['service']}", "--param", f"access_key_ids={json.dumps(params['access_key_ids'])}",
            "--param", f"suspicious_ips={json.dumps(params['suspicious_ips'])}",
            "--param", f"instance_ids={json.dumps(params['instance_ids'])}"]
    shown = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    data = json.loads(shown.stdout)
    from sevflow.models import Plan

    plans = {p["gate"]: Plan.model_validate(p["plan"]) for p in data["plans"]}
    assert list(plans) == list(GATES)
    assert all(plan.digest == p["digest"] for plan, p in zip(plans.values(), data["plans"]))
    assert [op.access_key_id for op in plans["disable-keys"].operations] == [account.key]
    assert plans["isolate"].operations[0].isolation_group_id == account.isolation
    assert "aws ec2 create-network-acl-entry" in data["text"] and "aws iam delete-access-key" in data["text"]
    assert account.world() == before
    assert account.receiver.received == []  # a dry run alerts nobody


def test_bad_input_stops_before_any_change(account: Account, moto_url: str, stack) -> None:
    from sevflow.flows.security_breach import security_breach

    before = account.world()
    unknown = security_breach(service="no-such-account", access_key_ids=[account.key], return_state=True)
    assert unknown.is_failed() and "No AWS account target named 'no-such-account'" in unknown.message

    s3 = account.client("s3")
    plain = f"plain-{account.sfx}"
    s3.create_bucket(Bucket=plain, CreateBucketConfiguration={"LocationConstraint": REGION})
    account.save(moto_url, evidence_bucket=plain)
    before = account.world()
    no_lock = security_breach(**account.parameters(), return_state=True)
    assert no_lock.is_failed() and "Object Lock" in no_lock.message and "Nothing was changed" in no_lock.message

    account.save(moto_url)
    bad_ip = security_breach(**(account.parameters() | {"suspicious_ips": ["not-an-ip"]}), return_state=True)
    assert bad_ip.is_failed() and "'not-an-ip' is not an IP address" in bad_ip.message

    unknown_key = security_breach(**(account.parameters() | {"access_key_ids": ["AKIANOSUCHKEY0000000"]}),
                                  return_state=True)
    assert unknown_key.is_failed() and "AKIANOSUCHKEY0000000 is not known" in unknown_key.message
    assert account.world() == before


def test_cloudtrail_lookups_through_the_interface() -> None:
    """moto's server has no CloudTrail LookupEvents, so this drives the interface with botocore's
    Stubber (real botocore client, request validation and pagination; canned answers)."""
    from botocore.stub import Stubber

    from sevflow import plans
    from sevflow.models import AccessKeyFact
    from sevflow.tasks.aws import CloudTrailActivity, key_activity_from

    client = boto3.client("cloudtrail", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")
    start_at = datetime(2026, 11, 30, tzinfo=timezone.utc)
    end_at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    key = "AKIAEXAMPLE000000001"

    def page(name: str, at: datetime, ip: str, bucket: str, token: str | None) -> dict[str, Any]:
        answer: dict[str, Any] = {"Events": [{
            "EventId": uuid.uuid4().hex, "EventName": name, "EventTime": at, "EventSource": "s3.amazonaws.com",
            "AccessKeyId": key, "Resources": [{"ResourceType": "AWS::S3::Bucket", "ResourceName": bucket}],
            "CloudTrailEvent": json.dumps({"sourceIPAddress": ip}),
        }]}
        if token:
            answer["NextToken"] = token
        return answer

    expected = {"LookupAttributes": [{"AttributeKey": "AccessKeyId", "AttributeValue": key}],
                "StartTime": start_at, "EndTime": end_at}
    stub = Stubber(client)
    stub.add_response("lookup_events", page("ListBuckets", datetime(2026, 11, 30, 3, tzinfo=timezone.utc),
                                            "203.0.113.7", "customer-data", "t1"), expected)
    stub.add_response("lookup_events", page("GetObject", datetime(2026, 11, 30, 4, tzinfo=timezone.utc),
                                            "203.0.113.7", "customer-data", None), expected | {"NextToken": "t1"})
    stub.add_client_error("lookup_events", service_error_code="AccessDeniedException", http_status_code=400)
    with stub:
        source = CloudTrailActivity(client)
        fact = AccessKeyFact(access_key_id=key, user="mallory", status="Inactive")
        activity = key_activity_from(source, [fact], start_at, end_at)
        denied = key_activity_from(source, [fact], start_at, end_at)
        stub.assert_no_pending_responses()
    [found] = activity
    assert [e.event_name for e in found.events] == ["ListBuckets", "GetObject"]
    assert found.events[0].source_ip == "203.0.113.7"
    [gap] = denied
    assert not gap.available and "AccessDeniedException" in gap.unavailable_reason

    scope = plans.assess_scope(activity + denied, end_at, None)
    assert scope.window_start == datetime(2026, 11, 30, 3, tzinfo=timezone.utc) and scope.window_end == end_at
    assert scope.resources_touched == ["AWS::S3::Bucket:customer-data"]
    assert scope.event_counts == {"s3.amazonaws.com:GetObject": 1, "s3.amazonaws.com:ListBuckets": 1}
    assert scope.source_ips == ["203.0.113.7"] and len(scope.gaps) == 1
