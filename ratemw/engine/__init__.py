"""The engine: what runs requests, built from a limiter's settings.

A ``Limiter`` holds configuration and the route decorators; its ``engine`` is what the
adapters (``ratemw.asgi``, ``ratemw.wsgi``, ``ratemw.contrib.django``) call, through a small
interface: ``plan`` a request line once, then per request one ``decide`` (``adecide`` under
ASGI) and, for the outcomes that need it, one ``settle`` (``asettle``).

Words used across the engine, each defined once:

- **limit group**: one declared set of quotas: a decorator's, a rule's, the defaults, the
  application-wide limits (``policy.groups.LimitGroup``);
- **quota**: ``amount`` units per ``window`` (``policy.limits.Quota``); a **policy** is a
  quota as it applies to a route, with the name callers see in the headers
  (``plans.PlannedPolicy``);
- **plan**: the groups and policies of one route and method, compiled once
  (``plans.Plan``); a **static** plan knows everything but the caller's identity, a **quiet**
  one also reports nothing of an admitted request but its draft-10 headers;
- **identity**: who a request counts as: what its key function returned, capped and hashed
  into a storage key;
- **hit**: one quota to check for one request (``storage.Hit``); a request's hits go to the
  storage in one call, all admitted or none; a **usage** is what the storage found for a hit
  (``storage.Usage``);
- **decision**: the usages turned into what the caller sees, one **policy state** per
  policy (``policy.decision``);
- **outcome**: what the adapter must do: refuse (429, 503) or pass the request on with
  headers, and settle once the response is over (``decide.Outcome``);
- **driver**: runs the decision path's generator with the sync or the async storage
  (``drivers``).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from ratemw._bounded import Bounded
from ratemw.engine.decide import PASS, Context, Outcome, ResponseInfo, decide, settle
from ratemw.engine.drivers import Storages, arun, run
from ratemw.engine.failures import FailureLog
from ratemw.engine.hits import KeptHits, KeyHasher
from ratemw.engine.plans import (
    NO_ROUTE,
    Declarations,
    Plan,
    Planner,
    compile_plan,
    groups_for,
)
from ratemw.engine.settings import Metrics, Settings
from ratemw.policy.groups import LimitGroup
from ratemw.policy.rules import Rule

__all__ = [
    "ADAPTER",
    "APPLIED",
    "CODE",
    "OUTCOME",
    "PASS",
    "Caller",
    "Declarations",
    "Engine",
    "Metrics",
    "Outcome",
    "Plan",
    "Planner",
    "ResponseInfo",
    "Settings",
    "Storages",
]


class Caller:
    """Who a call from code counts as, standing in for a request on the decision path.

    The plan's key function reads ``identity``; everything else (hooks reading headers,
    say) is the ``request`` it was made for, if one was given.
    """

    __slots__ = ("identity", "method", "path", "request")

    def __init__(self, identity: str, method: str, path: str, request: Any = None) -> None:
        self.identity = identity
        self.method = method
        self.path = path
        self.request = request

    def __getattr__(self, name: str) -> Any:
        if self.request is None:
            raise AttributeError(f"a call from code ({self.path}) has no request: no {name!r}")
        return getattr(self.request, name)


def caller_identity(caller: Caller) -> str:
    """The key function of a limit counted from code."""
    return caller.identity


_MAX_BATCH_IDS = 65536
_MAX_CODE_PLANS = 1024
#: The method of a call from code (``Limiter.hit``) made for no request: none.
CODE = ""

#: The limiters that already decided a request, in its ASGI scope or WSGI environ: the same
#: limiter installed twice in one stack (an app and its mounted sub-app, a middleware added
#: twice) counts the request once and writes its headers once.
APPLIED = "ratemw.limiters"
#: Where an adapter keeps a request's outcome for its endpoint (``ratemw.current``).
OUTCOME = "ratemw.outcome"
#: The adapter a request went through (the usage endpoint plans with its rules).
ADAPTER = "ratemw.adapter"


class Engine:
    """Decides requests for a limiter, by its settings and declarations.

    Built by the ``Limiter`` (never by hand), and built again when the limiter is
    reconfigured; the storage (``storages``), the failure log and the identity hasher
    outlive it.

    Example (what an adapter does)::

        engine = limiter.engine
        plan = planner.plans.get(cache_key) if planner.engine is engine else None
        plan = plan or planner.plan(engine, cache_key, path, method, resolve, scope)
        outcome = engine.decide(plan, request, method, path)
        if outcome.needs_settling:
            engine.settle(outcome, ResponseInfo(status))
    """

    def __init__(
        self,
        settings: Settings,
        declarations: Declarations,
        storages: Storages,
        failures: FailureLog,
        hasher: KeyHasher,
    ) -> None:
        self.settings = settings
        self.declarations = declarations
        self.storages = storages
        self.context = Context(settings, failures, hasher, KeptHits(settings, hasher))
        # Static plans that give the same hits share a batch id, so a route's kept hits serve
        # all its paths and hosts. Bounded: past the bound, ids are handed out afresh.
        self._batch_ids: Bounded[tuple[Any, ...], int] = Bounded(_MAX_BATCH_IDS)
        self._next_batch_id = itertools.count(1)
        self._code_plans: Bounded[tuple[Any, ...], Plan] = Bounded(_MAX_CODE_PLANS)

    def _batch_id(self, signature: tuple[Any, ...]) -> int:
        found = self._batch_ids.get(signature)
        if found is None:
            found = self._batch_ids.put(signature, next(self._next_batch_id))
        return found

    def plan(
        self,
        endpoint: Any,
        template: str | None,
        path: str,
        method: str,
        extra_rules: tuple[Rule, ...] = (),
        *,
        from_template: bool = False,
    ) -> Plan:
        """The plan of a request on ``endpoint`` (its route ``template``) at ``path`` (as the
        app routes it: rules match it), for ``method``. ``from_template``: ``path`` is the
        route's template, not a request's (to document or list a route's limits)."""
        groups = groups_for(
            self.settings, self.declarations, endpoint, path, method, extra_rules,
            template=from_template,
        )  # fmt: skip
        return compile_plan(
            self.settings, template or NO_ROUTE, groups, method, batch_id=self._batch_id
        )

    def decide(
        self, plan: Plan, request: Any, method: str, path: str, op: str = "acquire"
    ) -> Outcome:
        """Decide a request under WSGI (sync storage); with ``op="peek"``, only look."""
        return run(self.storages, decide(self.context, plan, request, method, path, op))

    async def adecide(
        self, plan: Plan, request: Any, method: str, path: str, op: str = "acquire"
    ) -> Outcome:
        """Decide a request under ASGI (async storage); with ``op="peek"``, only look."""
        return await arun(self.storages, decide(self.context, plan, request, method, path, op))

    def settle(self, outcome: Outcome, response: ResponseInfo) -> None:
        """Once the response is over: free its concurrency slots, refund what does not count."""
        run(self.storages, settle(self.context, outcome, response))

    async def asettle(self, outcome: Outcome, response: ResponseInfo) -> None:
        """The async twin of ``settle``."""
        await arun(self.storages, settle(self.context, outcome, response))

    # -- limits from code (Limiter.hit and peek) --------------------------------------------

    def code_plan(self, group: LimitGroup) -> Plan:
        """The plan of a limit counted from code (never quiet: its caller wants the numbers).

        Plans are kept by what the group is made of: a hot ``hit`` call compiles once.
        """
        found = self._code_plans.get(group.signature)
        if found is None:
            plan = compile_plan(self.settings, group.bucket, [group], CODE, batch_id=self._batch_id)
            found = self._code_plans.put(group.signature, replace(plan, quiet=False, headed=False))
        return found

    def hit(self, plan: Plan, caller: Caller, op: str = "acquire") -> Outcome:
        """Count (or, with ``op="peek"``, only look at) one call from code, sync storage."""
        steps = decide(self.context, plan, caller, caller.method, caller.path, op)
        return run(self.storages, steps)

    async def ahit(self, plan: Plan, caller: Caller, op: str = "acquire") -> Outcome:
        """The async twin of ``hit``."""
        steps = decide(self.context, plan, caller, caller.method, caller.path, op)
        return await arun(self.storages, steps)
