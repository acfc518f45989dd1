"""Policy: what limits mean and what callers are told. Pure code, no I/O.

- ``limits``: limit strings into quotas (``"5/minute;100/hour"``, bursts, concurrency);
- ``groups``: one declared set of quotas (a decorator's, a rule's, the defaults), and what
  the user's callables may return;
- ``rules``: limits matched on path patterns and route templates;
- ``decision``: from the storage's usages to a decision, one ``PolicyState`` per policy;
- ``headers``: the ``RateLimit`` fields of every header mode;
- ``problems``: the problem+json documents of a 429 and a 503.
"""
