"""The one way sevflow makes a task.

A sevflow flow is suspended at each approval gate and, when answered, runs its body again
from the top (that is how Prefect's suspend frees the worker). Only tasks whose results are
persisted and cached are skipped on that replay, so every step is a task whose result is
persisted under a key made of the flow run id, the step name and its inputs. A replay then
returns the first result instead of acting again.

Read-only steps retry on transient errors; mutating steps never retry on their own (they are
written to check before they act, so a person can safely re-run the procedure).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import hashlib

import httpx
from prefect import Task, task
from prefect.blocks.core import Block
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)


def _stable(value: Any) -> Any:
    # A saved block hashes by its name, not its fields: someone editing the block while a
    # gate waits must not change the keys of steps that already ran (their side effects
    # would run again on replay). Other models hash by their JSON form, where SecretStr
    # dumps as asterisks, so no secret reaches a cache key.
    if isinstance(value, Block) and getattr(value, "_block_document_name", None):
        return {"block": f"{value.get_block_type_slug()}/{value._block_document_name}"}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    return value


def run_scoped_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Cache key: flow run id + step name + inputs. Outside a flow run: no caching."""
    flow_run_id = context.task_run.flow_run_id
    if flow_run_id is None:
        return None
    digest = hash_objects(_stable(parameters), raise_on_failure=True)
    return f"sevflow-{flow_run_id}-{context.task.name}-{digest}"


RUN_SCOPED = CachePolicy.from_cache_key_fn(run_scoped_key)


def _retry_on_transient(task: Task[..., Any], task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


def _timeline_hook(milestone: str | None) -> Callable[[Any, Any, Any], None]:
    """Record the step's end on the incident's timeline, durably and once.

    Prefect persists task-run states asynchronously (from events), so a timeline read at the
    end of a run may miss its last steps; this record is written before the run goes on.
    """

    def record(task: Task[..., Any], task_run: Any, state: Any) -> None:
        from sevflow.models import TimelineEntry, utcnow
        from sevflow.tasks.orchestrator import RECORD_PREFIX, write_record

        if task_run.flow_run_id is None or state.name == "Cached":
            return  # a replay: the step's work, and its record, happened earlier
        ok = state.is_completed()
        entry = TimelineEntry(
            at=utcnow(), source="prefect", kind="step",
            description=f"Step '{task.name}' {'completed' if ok else state.name.lower()}"
            + ("" if ok or not state.message else f": {state.message}"),
            details={"milestone": milestone} if (ok and milestone) else {},
        )
        digest = hashlib.sha1((task_run.cache_key or str(task_run.id)).encode()).hexdigest()[:20]
        write_record(task_run.flow_run_id, f"{RECORD_PREFIX}step-{digest}", entry.model_dump(mode="json"))

    return record


def step(
    name: str,
    *,
    mutating: bool = False,
    retries: int = 2,
    retry_delay_seconds: float = 1.0,
    milestone: str | None = None,
    timeline: bool = True,
) -> Callable[[F], F]:
    """Make a runbook step: a task named in the runbook's words, persisted per flow run,
    whose end is a line of the incident's timeline (`milestone`: the post-mortem milestone
    it marks, e.g. "Fix deployed"; `timeline=False` for steps that write their own lines).

    ``mutating`` steps get no retries: they change production, and a retry is a decision
    for a person, not for the orchestrator.
    """

    def decorate(fn: F) -> F:
        hooks = [_timeline_hook(milestone)] if timeline else []
        kwargs: dict[str, Any] = dict(
            name=name,
            cache_policy=RUN_SCOPED,
            persist_result=True,
            log_prints=False,
            on_completion=hooks,
            on_failure=hooks,
        )
        if not mutating and retries:
            kwargs.update(
                retries=retries,
                retry_delay_seconds=retry_delay_seconds,
                retry_condition_fn=_retry_on_transient,
            )
        return task(**kwargs)(fn)  # type: ignore[return-value]

    return decorate
