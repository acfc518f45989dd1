"""Plans: the limits of one route and method, compiled once so that requests only fill in
numbers.

Which limit groups apply to a request depends on its route (the declarations on its
endpoint, the rules its path matches, the defaults) and its method. A ``Plan`` holds them,
with everything known before a request arrives worked out: each quota's policy name, the
tail of its storage key and the head of its ``RateLimit`` item. Adapters keep plans in a
``Planner``, one per request line (method, host, path...), so route resolution and planning
run once per distinct request line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ratemw._bounded import Bounded
from ratemw.engine.settings import Settings
from ratemw.keys import client_ip, header
from ratemw.policy.calendar import period_of
from ratemw.policy.groups import LimitGroup
from ratemw.policy.headers import policy_item, state_head
from ratemw.policy.limits import Quota
from ratemw.policy.rules import Rule, rule_groups
from ratemw.storage.base import CONCURRENCY
from ratemw.storage.strategies import tag_of

#: The strategy calendar quotas are counted by, whatever the limiter's: a window that ends
#: on the calendar's boundary.
CALENDAR_STRATEGY = "fixed-window"

__all__ = [
    "MAX_CACHED_PATH",
    "NO_ROUTE",
    "Declarations",
    "Entry",
    "Plan",
    "PlannedPolicy",
    "Planner",
    "compile_plan",
    "groups_for",
    "key_tail",
]

NO_ROUTE = "<no route>"
#: A request line with a part longer than this (a caller's invention: real routes are short)
#: is planned afresh each time instead of being kept.
MAX_CACHED_PATH = 512
_PLAN_CACHE_SIZE = 4096
_MAX_UNWRAP = 16  # how many functools.wraps layers are looked behind
MAX_FALLBACKS = 4  # how deep key functions' ``fallback`` chains are looked into


class Declarations:
    """The limits declared on endpoints with a limiter's decorators.

    Kept by the id of what was decorated (which need not be hashable), each with the object
    itself so that its id is never reused. The limiter builds a new engine after each
    declaration, so plans made before it are forgotten.
    """

    def __init__(self) -> None:
        self._groups: dict[int, tuple[Any, tuple[LimitGroup, ...]]] = {}
        self._exempt: dict[int, Any] = {}

    def add(self, endpoint: Any, groups: tuple[LimitGroup, ...]) -> None:
        _, known = self._groups.get(id(endpoint), (endpoint, ()))
        self._groups[id(endpoint)] = (endpoint, known + groups)

    def exempt(self, endpoint: Any) -> None:
        self._exempt[id(endpoint)] = endpoint

    def groups_of(self, target: Any) -> tuple[LimitGroup, ...]:
        found = self._groups.get(id(target))
        return found[1] if found is not None and found[0] is target else ()

    def is_exempt(self, target: Any) -> bool:
        return target is not None and self._exempt.get(id(target)) is target

    def all_groups(self) -> tuple[LimitGroup, ...]:
        """Every group declared (to check them again when the settings change)."""
        return tuple(group for _, groups in self._groups.values() for group in groups)


@dataclass(frozen=True, slots=True)
class PlannedPolicy:
    """One quota of a plan, named: what every request on the route counts it by."""

    quota: Quota
    name: str
    key_tail: str  # the storage key after the caller's digest
    head: str  # its RateLimit item up to the numbers: '"per-minute";r='


@dataclass(frozen=True, slots=True)
class Entry:
    """One limit group as it applies to this route and method."""

    group: LimitGroup
    bucket: str
    policies: tuple[PlannedPolicy, ...] | None  # None: a limit callable gives them
    key: Callable[[Any], Any]  # the group's key function, or the limiter's
    enforce: bool  # refuses when over (false: a shadow limit, or one with block=False)
    shadow: bool = False  # reported apart, never in the headers


@dataclass(frozen=True, slots=True)
class Plan:
    """The compiled limits of one route and method.

    - ``static``: every quota, cost and exemption is known before the request (no limit or
      cost callable, no ``exempt_when``, ``deduct_when`` or concurrency quota). A caller's
      hits are then the same on every request: the engine keeps them (by ``batch_id``, which
      names what they are made of, the same for every plan that gives the same hits).
    - ``quiet``: static, on a limiter that reports nothing of an admitted request but its
      draft-10 headers: those come straight from the storage's numbers, with the policy
      header (``policy_field``) and each policy's item head (``heads``) compiled here.
    - ``needs_request``: something (a key, a callable, a hook) reads past the scope, so the
      adapter must build a full request object.
    - ``skips_preflight``: an ``OPTIONS`` plan on a limiter that does not count CORS
      preflights: a request that is one passes (``Limiter(count_preflight=False)``).
    - ``headed``: an admitted request's outcome carries its headers (false for calls from
      code, which read the decision: a refusal still carries them, for the 429 it may raise).
    """

    template: str
    entries: tuple[Entry, ...]
    names: frozenset[str] = frozenset()
    static: bool = False
    quiet: bool = False
    policy_field: str = ""
    heads: tuple[str, ...] = ()
    needs_request: bool = True
    skips_preflight: bool = False
    headed: bool = True
    #: A static plan's groups as every request uses them: (entry, policies, cost) each.
    used: tuple[Any, ...] = field(default=(), compare=False)
    batch_id: int = field(default=0, compare=False)

    @property
    def groups(self) -> tuple[LimitGroup, ...]:
        return tuple(entry.group for entry in self.entries)


# -- which groups apply ---------------------------------------------------------------------


def _method_handler(endpoint: Any, method: str) -> Any:
    """For class-based endpoints, the method that handles ``method`` (``get`` for ``HEAD``)."""
    name = "get" if method == "HEAD" and not hasattr(endpoint, "head") else method.lower()
    return getattr(endpoint, name, endpoint)


def declaration_targets(endpoint: Any, method: str) -> list[Any]:
    """The endpoint, what it wraps, and the method handlers of classes among them.

    Flask and Django route to wrappers (``as_view()`` functions, ``functools.wraps``
    decorators); limits were declared on whichever of these the user decorated.
    """
    if endpoint is None:
        return []
    targets: list[Any] = []
    seen: set[int] = set()
    current = endpoint
    while current is not None and id(current) not in seen and len(seen) < _MAX_UNWRAP:
        seen.add(id(current))
        targets.append(current)
        view_class = getattr(current, "view_class", None)
        if isinstance(view_class, type):
            targets.append(view_class)
        current = getattr(current, "__wrapped__", None)
    handlers = [_method_handler(t, method) for t in targets if isinstance(t, type)]
    return targets + [h for h in handlers if h not in targets]


def groups_for(
    settings: Settings,
    declarations: Declarations,
    endpoint: Any,
    path: str,
    method: str,
    extra_rules: tuple[Rule, ...] = (),
    *,
    template: bool = False,
) -> list[LimitGroup]:
    """The limit groups that apply to ``method`` on ``endpoint`` at ``path`` (the path the
    app routes by; with ``template``, the route's template, for documents and listings).
    Defaults apply when none of the route's own limits covers ``method``."""
    if any(exempt.matches(path, template=template) for exempt in settings.exempt_paths):
        return []  # a health probe's path, say
    targets = declaration_targets(endpoint, method)
    if any(declarations.is_exempt(target) for target in targets):
        return []
    own = [g for target in targets for g in declarations.groups_of(target)]
    own.extend(rule_groups(settings.rules + extra_rules, path, template=template))
    own = [g for g in own if g.applies_to(method)]
    groups = own
    if not own or any(not g.override_defaults for g in own):
        groups = groups + list(settings.default_groups)
    return [*groups, *settings.application_groups]


# -- compiling --------------------------------------------------------------------------------


def key_tail(strategy: str, bucket: str, quota: Quota) -> str:
    """A quota's storage key after the caller's digest: ``}:<bucket>:<tag>:<amount>/<window>``."""
    if quota.concurrent:
        strategy = CONCURRENCY
    elif quota.calendar is not None:
        strategy = CALENDAR_STRATEGY
    tag = tag_of(strategy)
    return f"}}:{bucket}:{tag}:{quota.amount}/{quota.window}"


def unique_name(group: LimitGroup, quota: Quota, taken: set[str]) -> str:
    """The policy name of a quota, made unique among the names already taken."""
    name = group.name_prefix + quota.name
    if name in taken:
        name = f"{group.kind}-{name}"
        while name in taken:
            name += "-"
    taken.add(name)
    return name


def planned_policies(
    strategy: str, group: LimitGroup, bucket: str, quotas: tuple[Quota, ...], taken: set[str]
) -> tuple[PlannedPolicy, ...]:
    """The named policies of ``quotas`` (a group's own, or a limit callable's for a request)."""
    policies = []
    for quota in quotas:
        name = unique_name(group, quota, taken)
        policies.append(
            PlannedPolicy(quota, name, key_tail(strategy, bucket, quota), state_head(name))
        )
    return tuple(policies)


def reads_scope_only(key: Any) -> bool:
    """Whether a key function is a built-in one: it reads only the scope and answers a string
    at once (``keys.client_ip``, or ``keys.header`` falling back to one; not a subclass that
    overrides the call)."""
    for _ in range(MAX_FALLBACKS):
        call = getattr(type(key), "__call__", None)  # noqa: B004 - which call, not whether
        if call is client_ip.__call__:
            return True
        if call is not header.__call__:
            return False
        key = key.fallback
    return False


def _is_static(group: LimitGroup) -> bool:
    return (
        group.quotas is not None
        and not any(quota.concurrent or quota.calendar for quota in group.quotas)
        and group.exempt_when is None
        and group.deduct_when is None
        and isinstance(group.cost, int)
    )


def dated(policy: PlannedPolicy, now_ms: int, billing_day: int = 1) -> PlannedPolicy:
    """A calendar quota's policy for a request at ``now_ms``: its window is the period's
    length, and it ends with the period (``until_ms``)."""
    quota = policy.quota
    assert quota.calendar is not None
    _, start_ms, end_ms = period_of(now_ms, quota.calendar, billing_day)
    length = -(-(end_ms - start_ms) // 1000)
    # One count per caller and quota, whatever period or billing day a request computes:
    # its window, set by the period's first request, ends on that period's boundary and the
    # count with it. (A billing day a caller can vary, or a failing callable, earns no count
    # of its own.)
    return PlannedPolicy(
        replace(quota, window=length, until_ms=end_ms), policy.name, policy.key_tail, policy.head
    )


def _reads_request(group: LimitGroup, key: Any) -> bool:
    return not (
        reads_scope_only(key)
        and group.quotas is not None
        and not any(
            quota.calendar is not None and callable(quota.calendar.billing_day)
            for quota in group.quotas
        )
        and group.exempt_when is None
        and isinstance(group.cost, int)
        and not callable(group.error_message)
    )


@dataclass(frozen=True, slots=True)
class Used:
    """What one limit group came to for a request: its policies and the request's cost."""

    entry: Entry
    policies: tuple[PlannedPolicy, ...]
    cost: int


def make_used(entry: Entry) -> Used:
    """A static entry as every request uses it."""
    cost: int = entry.group.cost  # type: ignore[assignment]  # static: an int
    return Used(entry, entry.policies or (), cost)


def compile_plan(
    settings: Settings,
    template: str,
    groups: list[LimitGroup],
    method: str,
    *,
    batch_id: Callable[[tuple[Any, ...]], int],
) -> Plan:
    """The plan of ``groups`` on a route (``template``) for ``method``.

    ``batch_id(signature)`` names what a static plan's hits are made of.
    """
    entries: list[Entry] = []
    names: set[str] = set()
    for group in groups:
        if group.methods is not None and method not in group.methods:
            continue
        bucket = group.storage_bucket(template, method)
        policies = None
        if group.quotas is not None:
            policies = planned_policies(settings.strategy, group, bucket, group.quotas, names)
        shadow = settings.shadow if group.shadow is None else group.shadow
        enforce = not shadow and group.block
        entries.append(Entry(group, bucket, policies, group.key or settings.key, enforce, shadow))
    static = all(_is_static(entry.group) for entry in entries)
    quiet = static and not settings.reports_admissions
    every = [policy for entry in entries for policy in entry.policies or ()]
    signature = (settings.key_head, settings.strategy, *(
        (entry.group.cost, entry.enforce,
         *((p.key_tail, p.quota.window_ms, p.quota.burst) for p in entry.policies or ()))
        for entry in entries
    ))  # fmt: skip
    hooked = settings.on_breach or settings.on_near_limit or settings.on_storage_error
    return Plan(
        template=template,
        entries=tuple(entries),
        names=frozenset(names),
        static=static,
        quiet=quiet,
        policy_field=", ".join(policy_item(p.name, p.quota.amount, p.quota.window) for p in every)
        if static
        else "",
        heads=tuple(p.head for p in every) if static else (),
        needs_request=bool(hooked or settings.request_filters)
        or any(_reads_request(entry.group, entry.key) for entry in entries),
        skips_preflight=method == "OPTIONS" and not settings.count_preflight,
        used=tuple(make_used(e) for e in entries) if static else (),
        batch_id=batch_id(signature) if static else 0,
    )


# -- keeping plans ----------------------------------------------------------------------------


def cacheable(cache_key: tuple[object, ...]) -> bool:
    """Whether a plan may be kept under this key: none of its texts is over
    ``MAX_CACHED_PATH`` (checked on a miss only: a hit costs nothing more)."""
    return all(len(part) <= MAX_CACHED_PATH for part in cache_key if isinstance(part, str | bytes))


class _Planning(Protocol):
    """What a ``Planner`` asks of an engine (``ratemw.engine.Engine``)."""

    def plan(
        self, endpoint: Any, template: str | None, path: str, method: str,
        extra_rules: tuple[Rule, ...] = (),
    ) -> Plan: ...  # fmt: skip


Resolver = Callable[..., Any]  # (*args) -> (endpoint, template), or a routes.Resolution


class Planner:
    """One adapter's plans, kept by request line (what its routing depends on), for the
    engine they were made by.

    A new engine (the limiter was reconfigured, or a route declared on) makes new plans. The
    adapters read ``plans`` themselves, on every request, without a call::

        planner = self._planner
        plan = planner.plans.get(cache_key) if planner.engine is engine else None
        if plan is None:
            plan = planner.plan(engine, cache_key, path, method, resolve, environ)

    A request line with a part over ``MAX_CACHED_PATH`` characters (a path, a ``Host``
    header, a made-up method) is planned afresh each time rather than kept.
    """

    def __init__(self, rules: tuple[Rule, ...] = ()) -> None:
        self.rules = rules
        self.engine: Any = None
        self.plans: Bounded[tuple[Any, ...], Plan] = Bounded(_PLAN_CACHE_SIZE)

    def _follow(self, engine: _Planning) -> None:
        # A new table, not the old one cleared: a plan of the old engine stored meanwhile
        # lands in the old table (see plan()).
        self.plans = Bounded(_PLAN_CACHE_SIZE)
        self.engine = engine

    def plan(
        self,
        engine: _Planning,
        cache_key: tuple[Any, ...],
        path: str,
        method: str,
        resolve: Resolver,
        *args: Any,
    ) -> Plan:
        """Plan a request line: ``resolve(*args)`` finds its route, ``path`` is matched
        against rules. Kept under ``cache_key`` unless the route says it cannot be."""
        if engine is not self.engine:
            self._follow(engine)
        found = resolve(*args)
        keep = getattr(found, "cacheable", True)
        if not isinstance(found, tuple):
            found = (found.endpoint, found.template)
        plan = engine.plan(found[0], found[1], path, method, self.rules)
        if keep and cacheable(cache_key):
            plans = self.plans
            plans.put(cache_key, plan)
            if self.engine is not engine:  # the engine changed while planning: not kept
                plans.pop(cache_key, None)
        return plan
