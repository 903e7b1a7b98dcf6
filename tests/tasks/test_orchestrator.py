"""Durable records on a run: write-once, and all of them read back however many there are."""

from __future__ import annotations

from prefect import flow
from prefect.client.orchestration import get_client

from sevflow.tasks.orchestrator import read_records, write_record
from tests.support.stack import PrefectServer


def test_records_are_write_once_and_read_past_one_page(stack: PrefectServer) -> None:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow=flow(lambda: None, name="records-paging"))
    for i in range(230):  # more than one page of the input filter API (200)
        assert write_record(run.id, f"sevflow-record-alert-{i:04d}", {"n": i})
    assert not write_record(run.id, "sevflow-record-alert-0007", {"n": "again"})
    records = read_records(run.id, "sevflow-record-alert-")
    assert len(records) == 230 and records["sevflow-record-alert-0007"] == {"n": 7}
