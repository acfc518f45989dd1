"""Finding the route a request will reach, before the framework routes it.

The middlewares sit outside the app's router, so they ask it, in its own terms, which
endpoint (whose decorators carry limits) and which route template (one bucket per route, not
per path) a request will reach: ``starlette`` walks Starlette and FastAPI routes, ``flask``
matches a Flask URL map, ``django`` resolves a Django URLconf. The framework is imported only
by the resolver that needs it.
"""
