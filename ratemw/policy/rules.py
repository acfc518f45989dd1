"""Route rules: limits declared in configuration for code you do not own."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ratemw.errors import ConfigurationError
from ratemw.policy.groups import CostValue, LimitGroup, LimitValue, groups_from

# Route parameters, as Starlette and FastAPI write them ({id}, {id:int}, {rest:path}) and as
# Flask and Werkzeug do (<id>, <int:id>, <path:rest>).
_PARAMETER = re.compile(r"\{([^{}:]*)(?::([^{}]*))?\}|<(?:([^<>:]*):)?([^<>:]*)>")
_HEX = "[0-9a-fA-F]"
_UUID = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# What a route parameter matches, by converter, as the routers do: for a rule, at least
# whatever Starlette, Werkzeug or Django would route there (a rule that matches less than
# the router lets requests escape it); for an exempt path, at most what all of them would
# (an exempt path that matches more lets requests to a sibling route escape their limits).
_SEGMENT = "[^/]+"
_BROAD = {
    "": _SEGMENT, "str": _SEGMENT, "string": _SEGMENT, "any": _SEGMENT,
    "int": r"\d+", "float": r"\d+(?:\.\d+)?", "uuid": _UUID, "slug": "[-a-zA-Z0-9_]+",
    "path": ".*",
}  # fmt: skip
_NARROW = {
    **_BROAD,
    "int": "[0-9]+", "float": r"[0-9]+\.[0-9]+", "uuid": _UUID.replace("a-fA-F", "a-f"),
    "path": "[^/].*",
}  # fmt: skip
_CONVERTERS = frozenset(_BROAD)
_PLACEHOLDER = r"\{[^{}/]*\}|<[^<>/]*>"


def _piece(part: str, pattern: str, converters: dict[str, str], template: bool) -> str:
    """The regular expression of one piece of a rule path: a parameter, '*' or literal text."""
    if part == "*":
        return ".*"
    found = _PARAMETER.fullmatch(part)
    if found is None:
        if any(ch in part for ch in "{}<>"):
            raise ConfigurationError(
                f"rule path {pattern!r} can never match: unbalanced {{...}} or <...> in it "
                "(route parameters are written {name}, {name:path}, <name> or <int:name>)"
            )
        return re.escape(part)
    converter = (found[2] if found[1] is not None else found[3]) or ""
    name = found[1] if found[1] is not None else found[4]
    if not name or not name.isidentifier() or converter not in _CONVERTERS:
        raise ConfigurationError(
            f"rule path {pattern!r}: cannot read the route parameter {part!r} (expected e.g. "
            "{id}, {id:int}, {rest:path}, <id> or <int:id>)"
        )
    if template:  # matched against route templates too: "{item_id}", "<int:item_id>"
        return f"(?:{converters[converter]}|{_PLACEHOLDER})"
    return converters[converter]


def _compile(pattern: str, *, exempt: bool = False, template: bool = False) -> re.Pattern[str]:
    """A rule path as a regular expression (``exempt``: an exempt path, matched narrowly;
    ``template``: matched against route templates, whose parameters are placeholders)."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ConfigurationError(
            f"rule path {pattern!r} can never match: request paths start with '/' (e.g. '/api/*')"
        )
    if any(ch.isspace() for ch in pattern):
        raise ConfigurationError(f"rule path {pattern!r} can never match: it contains white space")
    # '*' matches any run of characters, '/' included; a route parameter what the router
    # would match; everything else is literal.
    parts = re.split(r"(\*|\{[^{}]*\}|<[^<>]*>)", pattern)
    converters = _NARROW if exempt else _BROAD
    text = "".join(_piece(part, pattern, converters, template) for part in parts if part)
    # DOTALL: a decoded "%0A" in a path must not slip past a '*'. Starlette's routes end in
    # '$', which also matches before a final newline ("/search%0A" reaches "/search"): a
    # rule matches there too; an exempt path does not.
    return re.compile(text + (r"\Z" if exempt else r"\n?\Z"), re.DOTALL)


class Rule:
    """A limit on every request whose path matches ``path`` (and method is in ``methods``).

    ``*`` in ``path`` matches anything, ``/`` included: ``"/api/*"`` covers ``/api/users`` and
    ``/api/v1/items/3``. Route templates work too: ``"/items/{item_id}"`` (or Flask's
    ``"/items/<int:item_id>"``) matches one path segment where the parameter is,
    ``{rest:path}`` any number. Paths are matched as the app routes them: relative to the
    ASGI ``root_path`` or the WSGI ``SCRIPT_NAME``. All requests matching a rule share its
    counts (per key).

    Example::

        RateLimitMiddleware(app, limiter=limiter, rules=[
            Rule("/static/*", "300/minute"),
            Rule("/api/*", "100/minute", methods=["POST"]),
        ])

    Args:
        path: the path pattern.
        limit: a limit string (``"100/minute;1000/hour"``) or a callable of the request.
        methods: HTTP methods the rule applies to (all when omitted); ``"WEBSOCKET"`` matches
            WebSocket handshakes.
        key: as for ``Limiter.limit`` (as are ``cost``, ``per_method``, ``exempt_when``,
            ``shadow``, ``deduct_when``, ``failure_mode``, ``fallback``, ``error_message`` and
            ``block``).
    """

    def __init__(
        self,
        path: str,
        limit: LimitValue,
        *,
        methods: Iterable[str] | None = None,
        key: Callable[[Any], Any] | None = None,
        cost: CostValue = 1,
        per_method: bool = False,
        exempt_when: Callable[[Any], Any] | None = None,
        shadow: bool | None = None,
        deduct_when: Callable[[Any], Any] | None = None,
        failure_mode: str | None = None,
        fallback: str | None = None,
        error_message: str | Callable[[Any], Any] | None = None,
        block: bool = True,
    ) -> None:
        self.path = path
        self._regex = _compile(path)
        self._template_regex = _compile(path, template=True)
        self.groups = groups_from(
            "rule",
            limit,
            bucket=path,
            key=key,
            cost=cost,
            methods=methods,
            per_method=per_method,
            exempt_when=exempt_when,
            shadow=shadow,
            deduct_when=deduct_when,
            failure_mode=failure_mode,
            fallback=fallback,
            error_message=error_message,
            block=block,
        )
        self.limit = limit
        self.methods = self.groups[0].methods if self.groups else None

    def __repr__(self) -> str:
        methods = sorted(self.methods) if self.methods else None
        return f"Rule({self.path!r}, {self.limit!r}, methods={methods!r})"

    def matches(self, path: str, *, template: bool = False) -> bool:
        """Whether ``path`` is exempt (with ``template``: a route template's requests are)."""
        regex = self._template_regex if template else self._regex
        return regex.match(path) is not None


class ExemptPath:
    """A path no limit applies to (``Limiter(exempt_paths=...)``), written as a rule path."""

    __slots__ = ("_regex", "_template_regex", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._regex = _compile(path, exempt=True)
        self._template_regex = _compile(path, exempt=True, template=True)

    def __repr__(self) -> str:
        return repr(self.path)

    def matches(self, path: str, *, template: bool = False) -> bool:
        """Whether the rule applies to ``path`` (with ``template``: to a route template)."""
        regex = self._template_regex if template else self._regex
        return regex.match(path) is not None


def exempt_paths(paths: Any) -> tuple[ExemptPath, ...]:
    """``exempt_paths`` checked: rule paths such as ``"/healthz"`` or ``"/health*"``."""
    if isinstance(paths, str) or not isinstance(paths, Iterable):
        raise ConfigurationError(
            f"invalid exempt_paths {paths!r}: expected a list of paths, such as ['/healthz']"
        )
    compiled = []
    for path in paths:
        try:
            compiled.append(ExemptPath(path))
        except ConfigurationError as exc:
            raise ConfigurationError(f"exempt_paths: {exc}") from None
    return tuple(compiled)


def check_rules(rules: Iterable[Any]) -> tuple[Rule, ...]:
    result = tuple(rules)
    for rule in result:
        if not isinstance(rule, Rule):
            raise ConfigurationError(f"rules must be ratemw.Rule objects, got {rule!r}")
    return result


def rule_groups(rules: tuple[Rule, ...], path: str, *, template: bool = False) -> list[LimitGroup]:
    groups: list[LimitGroup] = []
    for rule in rules:
        if rule.matches(path, template=template):
            groups.extend(rule.groups)
    return groups
