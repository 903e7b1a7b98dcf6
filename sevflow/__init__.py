"""sevflow: an operations team's emergency runbook as approval-gated Prefect flows."""

__version__ = "0.1.0"
