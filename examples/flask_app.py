"""A Flask app with ratemw: run it with ``gunicorn examples.flask_app:app``.

- ``/search``: 5 requests a minute and 100 an hour per client (a class-based view);
- ``/items/<int:item_id>``: 2 a minute, one bucket for every item;
- ``/stream``: a streamed response, passed through untouched (the default limit applies);
- ``/health``: never limited;
- every other route: the default limit, 20 a minute.

Memory storage counts per process: with several gunicorn workers, point ``RATEMW_STORAGE``
at Redis (``RATEMW_STORAGE=redis://localhost:6379``) so they share one count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request
from flask.views import MethodView

from ratemw import Limiter, keys
from ratemw.contrib.flask import init_app

limiter = Limiter(
    storage=os.environ.get("RATEMW_STORAGE", "memory://"),
    default_limits="20/minute",
    key=keys.client_ip(),
)
app = Flask(__name__)
init_app(app, limiter)


class Search(MethodView):
    @limiter.limit("5/minute;100/hour")
    def get(self) -> Response:
        return jsonify(query=request.args.get("q", ""), results=[])


app.add_url_rule("/search", view_func=Search.as_view("search"))


@app.get("/items/<int:item_id>")
@limiter.limit("2/minute")
def item(item_id: int) -> Response:
    return jsonify(id=item_id)


@app.get("/stream")
def stream() -> Response:
    def lines() -> Iterator[str]:
        for n in range(3):
            yield f"tick {n}\n"

    return Response(lines(), mimetype="text/plain")


@app.get("/health")
@limiter.exempt
def health() -> Response:
    return jsonify(status="ok")
