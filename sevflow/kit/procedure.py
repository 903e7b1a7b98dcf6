"""A procedure's run: its incident, its gates, how it ends.

A procedure is a plain function of a :class:`Procedure` (the incident, the approval policy,
whether this is a dry run) wrapped by a thin `@flow`. A procedure that needs another
(Production System Down rolls the application back) calls that one's body with the same
`Procedure`: Prefect cannot suspend a subflow, so gates work at any depth only inside the
one run.

How a change is asked for and made (:meth:`Procedure.approve`):

1. the body's planner gathers facts (read-only, persisted steps) and returns one exact plan;
2. the gate asks for it (a name unique in the run: repeats are numbered);
3. once approved, every precondition of the approved plan is checked again; if anything
   moved (HEAD, the block, a file), nothing is changed, the timeline says what moved, and the
   planner is asked again from fresh facts (a new gate), up to `MAX_PLANS` times;
4. the body then carries out the approved plan, taking every input from it.

Ending without a change is an exception the wrapper turns into a named state after
publishing the paperwork: rejected, expired, nothing to do, dry run, plan kept drifting.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from prefect import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State

from sevflow.errors import ConfigurationError
from sevflow.gate import require_approval
from sevflow.incident import open_incident, publish_records
from sevflow.kit.preconditions import check_preconditions, show_plan
from sevflow.models import GateOutcome, GateResult, IncidentContext, Plan, Severity

AWAITING_HUMAN_DECISION = "AwaitingHumanDecision"
REJECTED = "Rejected"
NOTHING_TO_DO = "NothingToDo"
DRY_RUN = "DryRun"
PLAN_DRIFTED = "PlanDrifted"

MAX_PLANS = 3
"""How often one change is planned and asked for again after its preconditions drifted."""

T = TypeVar("T")


class ProcedureEnd(Exception):
    """The procedure ends here without (further) change. Carries the paperwork and the state."""

    publish = True  # publish the timeline and post-mortem (a dry run has no incident to document)

    def __init__(self, outcome: str, message: str, resolution: list[str], state: Callable[..., State],
                 state_name: str, proven: list[str] | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.outcome, self.message, self.resolution = outcome, message, resolution
        self.state, self.state_name, self.proven, self.data = state, state_name, proven or [], data


class GateClosed(ProcedureEnd):
    """A gate was rejected or expired: nothing of its plan was changed."""

    def __init__(self, result: GateResult, what: str) -> None:
        self.result = result
        last = result.answers[-1][2] if result.answers else ""
        if result.outcome is GateOutcome.REJECTED:
            super().__init__("rejected", f"{what} was rejected; nothing was changed. {last}".strip(),
                             [f"{what}: rejected; nothing was changed. {last}".strip()], Cancelled, REJECTED)
        else:
            super().__init__(
                "awaiting human decision",
                f"{what}: nobody answered through every escalation tier. Nothing was changed; "
                "the incident is documented and waits on a human decision.",
                [f"{what}: no decision after the last escalation tier; nothing was changed."],
                Failed, AWAITING_HUMAN_DECISION,
            )


class NothingToDo(ProcedureEnd):
    """The facts show there is nothing to change (already in the wanted state)."""

    def __init__(self, message: str) -> None:
        super().__init__("nothing to do", message, [message], Completed, NOTHING_TO_DO)


class DryRunEnd(ProcedureEnd):
    """A dry run reached its first gate: the plan is shown, nothing was asked or changed.
    (Later gates ask about changes that depend on this one being made.) A procedure of
    independent changes (`Procedure.offer`) shows every plan: `shown` lists them in order."""

    publish = False

    def __init__(self, gate: str, plan: Plan, earlier: list[tuple[str, Plan]] | None = None) -> None:
        self.plan = plan
        shown = [*(earlier or []), (gate, plan)]
        self.shown = shown
        asks = "; ".join(f"gate {g!r} would ask for approval of {p.title!r} (plan {p.digest})" for g, p in shown)
        message = f"Dry run: {asks}. Nothing was asked for and nothing was changed."
        entries = [{"gate": g, "digest": p.digest, "plan": p.model_dump(mode="json"), "text": p.describe()}
                   for g, p in shown]
        super().__init__("dry run", message, [message], Completed, DRY_RUN,
                         data={**entries[0], "text": "\n\n---\n\n".join(e["text"] for e in entries),
                               "plans": entries})


class PlanKeptDrifting(ProcedureEnd):
    def __init__(self, what: str, moved: list[str]) -> None:
        message = (f"{what}: what the plan assumed kept changing after approval ({'; '.join(moved)}); "
                   f"asked {MAX_PLANS} times, nothing was changed. Run the procedure again when it is stable.")
        super().__init__("plan drifted", message, [message], Failed, PLAN_DRIFTED)


@dataclass
class Procedure:
    """The run a procedure body works in. Pass it on to a composed procedure's body."""

    incident: IncidentContext
    policy: str = "default"
    dry_run: bool = False
    _gates: Counter[str] = field(default_factory=Counter)
    shown: list[tuple[str, Plan]] = field(default_factory=list)
    """Dry run: the plans `offer` showed, in order."""
    declined: list[str] = field(default_factory=list)
    """What `offer` was told no to, a sentence each (for the paperwork)."""

    @property
    def run_key(self) -> str:
        """Marks what this run changed (commit trailers, idempotency keys)."""
        return self.incident.flow_run_id

    def gate_name(self, base: str) -> str:
        """`base` the first time in this run, then `base-2`, `base-3`... (same order on every replay)."""
        self._gates[base] += 1
        n = self._gates[base]
        return base if n == 1 else f"{base}-{n}"

    def preview(self, plans: list[tuple[str, Plan]]) -> None:
        """Dry run of a procedure whose gates can all be planned from today's facts: show every
        plan and end (DryRunEnd). Outside a dry run, does nothing."""
        if not self.dry_run or not plans:
            return
        for gate, plan in plans:
            show_plan(self.incident, gate, plan)
        raise DryRunEnd(plans[-1][0], plans[-1][1], plans[:-1])

    def approve(self, planner: Callable[[str], Plan], *, gate: str) -> Plan:
        """Ask for the plan `planner(reading)` makes, and return it once approved and still
        valid. `reading` is the gate's name, unique in the run: the planner reads the target
        with it (`read_service_target(service, reading)`), so a plan made again after drift
        gathers every fact afresh. Raises GateClosed, DryRunEnd or PlanKeptDrifting."""
        plan = self._ask(planner, gate, optional=False)
        assert plan is not None
        return plan

    def offer(self, planner: Callable[[str], Plan | None], *, gate: str) -> Plan | None:
        """Ask for one of several independent changes. Like `approve`, except: a planner that
        returns None has nothing to ask (no gate opens); a rejection is recorded in
        `declined` and returns None, so the body goes on to the next change; in a dry run
        the plan is shown, kept in `shown`, and None is returned (end the body with
        `raise ctx.dry_run_end()`). An expired gate still ends the procedure."""
        try:
            return self._ask(planner, gate, optional=True)
        except GateClosed as closed:
            if closed.result.outcome is not GateOutcome.REJECTED:
                raise
            self.declined.extend(closed.resolution)
            return None

    def dry_run_end(self) -> ProcedureEnd:
        """After a dry run's offers: the end that shows every plan (or says there was none)."""
        if not self.shown:
            end = ProcedureEnd("dry run", "Dry run: no change to propose; nothing was changed.",
                               [], Completed, DRY_RUN, data={"plans": [], "text": "No change to propose."})
            end.publish = False  # a dry run has no incident to document
            return end
        (gate, plan), earlier = self.shown[-1], self.shown[:-1]
        return DryRunEnd(gate, plan, earlier)

    def _ask(self, planner: Callable[[str], Plan | None], gate: str, optional: bool) -> Plan | None:
        moved: list[str] = []
        plan: Plan | None = None
        for _attempt in range(MAX_PLANS):
            name = self.gate_name(gate)
            plan = planner(name)
            if plan is None:
                return None
            if self.dry_run:
                show_plan(self.incident, name, plan)
                if optional:
                    self.shown.append((name, plan))
                    return None
                raise DryRunEnd(name, plan, self.shown)
            result = require_approval(self.incident, plan, gate=name, policy=self.policy)
            if not result.approved:
                raise GateClosed(result, plan.title)
            approved = result.plan or plan
            moved = check_preconditions(self.incident, name, approved)
            if not moved:
                return approved
            get_run_logger().warning("Plan %s no longer holds (%s): nothing changed; asking again",
                                     approved.digest[:12], "; ".join(moved))
        raise PlanKeptDrifting(plan.title if plan else gate, moved)


def begin(procedure: str, service: str, severity: Severity, incident_id: str | None, reason: str,
          policy: str = "default", dry_run: bool = False, service_policy: str | None = None) -> Procedure:
    """Open the incident (tags, first timeline line) and return the run's Procedure.

    `service_policy` is the policy the service's target names: the rules belong to the
    service, so it wins over the run's `policy` parameter (which whoever starts the run picks).
    The incident's severity is `severity` raised to the floors of that policy and of the alert
    that started the run (`sevflow.incident.severity_floors`); every gate judges by it."""
    if not policy:
        raise ConfigurationError("Name an approval policy block (policy=...), e.g. `default`.")
    if service_policy and policy != service_policy:
        if policy != "default":
            get_run_logger().warning("The run asked for approval policy %r; service %s is judged by its own "
                                     "policy %r.", policy, service, service_policy)
        policy = service_policy
    incident = open_incident(procedure, service, severity, incident_id, reason + (" (dry run)" if dry_run else ""),
                             policy)
    # The post-incident follow-up reads its delay and the incident commander from this policy.
    incident = incident.model_copy(update={"policy": policy})
    return Procedure(incident=incident, policy=policy, dry_run=dry_run)


def run(ctx: Procedure, body: Callable[..., T], *args: Any, **kwargs: Any) -> T | State:
    """Call the body; an end without change publishes the paperwork and becomes its named state."""
    try:
        return body(ctx, *args, **kwargs)
    except ProcedureEnd as end:
        if end.publish:
            publish_records(ctx.incident, end.outcome, end.resolution, end.proven)
        return end.state(name=end.state_name, message=end.message, data=end.data)
