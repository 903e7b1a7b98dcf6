"""The security breach's plans, decided from facts without AWS (pure)."""

from __future__ import annotations

import pytest

from sevflow import plans
from sevflow.models import (
    AccessKeyFact, AwsAccess, AwsAccountSpec, EniGroups, InstanceFact, IpSetFact, NaclEntryFact, NaclFact, Plan,
    WafIpSetRef,
)

SPEC = AwsAccountSpec(block="prod", account="prod", access=AwsAccess(credentials_block="aws", region="eu-west-1"),
                      evidence_bucket="evidence", network_acl_id="acl-1", deny_rule_base=10,
                      waf_ip_set=WafIpSetRef(name="bad", id="ips-1"), isolation_group_id="sg-iso")


def test_ips_are_denied_both_ways_at_free_numbers_below_the_allow_rules() -> None:
    acl = NaclFact(network_acl_id="acl-1", entries=[
        NaclEntryFact(rule_number=10, egress=False, action="deny", cidr="192.0.2.9/32"),
        NaclEntryFact(rule_number=100, egress=False, action="allow", cidr="0.0.0.0/0"),
        NaclEntryFact(rule_number=100, egress=True, action="allow", cidr="0.0.0.0/0"),
    ])
    ip_set = IpSetFact(ref=SPEC.waf_ip_set, version="IPV4", addresses=["192.0.2.1/32"])
    cidrs = plans.normalise_ips(["203.0.113.7", "2001:db8::1", "203.0.113.7/32"])
    plan = plans.block_ips_plan(SPEC, cidrs, acl, ip_set)
    deny, waf = plan.operations
    assert sorted((e.rule_number, e.egress, e.cidr) for e in deny.entries) == [
        (10, True, "2001:db8::1/128"), (11, False, "2001:db8::1/128"), (11, True, "203.0.113.7/32"),
        (12, False, "203.0.113.7/32")]
    assert deny.prior_entries == acl.lines()
    assert waf.add == ["203.0.113.7/32"] and waf.prior_addresses == ["192.0.2.1/32"]  # IPv4 set: IPv4 only
    assert "delete-network-acl-entry --network-acl-id acl-1 --rule-number 11 --ingress" in plan.undo
    assert Plan.model_validate(plan.model_dump(mode="json")).digest == plan.digest


def test_an_address_already_denied_is_not_planned_again() -> None:
    acl = NaclFact(network_acl_id="acl-1", entries=[
        NaclEntryFact(rule_number=10, egress=False, action="deny", cidr="203.0.113.7/32"),
        NaclEntryFact(rule_number=10, egress=True, action="deny", cidr="203.0.113.7/32")])
    assert plans.block_ips_plan(SPEC.model_copy(update={"waf_ip_set": None}), ["203.0.113.7/32"], acl, None).operations == []


def test_only_active_keys_are_disabled_and_each_interface_keeps_its_prior_groups() -> None:
    keys = [AccessKeyFact(access_key_id="AKIA1", user="mallory", status="Active"),
            AccessKeyFact(access_key_id="AKIA2", user="mallory", status="Inactive")]
    disable = plans.disable_keys_plan(SPEC, keys)
    assert [(op.access_key_id, op.prior_status) for op in disable.operations] == [("AKIA1", "Active")]
    assert "--status Active" in disable.undo
    inst = InstanceFact(instance_id="i-1", state="running", volumes=["vol-1"], interfaces=[
        EniGroups(network_interface_id="eni-1", groups=["sg-a", "sg-b"]),
        EniGroups(network_interface_id="eni-2", groups=["sg-iso"])])
    isolate = plans.isolate_plan(SPEC, [inst])
    [op] = isolate.operations
    assert [(e.network_interface_id, e.groups) for e in op.interfaces] == [("eni-1", ["sg-a", "sg-b"])]
    assert "--groups sg-a sg-b" in isolate.undo


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match="'nope' is not an IP address"):
        plans.normalise_ips(["203.0.113.7", "nope"])
