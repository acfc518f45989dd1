"""Run the Starlette example under uvicorn and show what a caller sees.

Sends a short burst to ``/search`` (5 requests a minute): the first five are allowed and carry
``RateLimit`` headers; the sixth gets the 429 with ``Retry-After`` and a problem+json body.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import httpx2
import uvicorn

SHOWN = ("Retry-After", "RateLimit-Policy", "RateLimit", "Content-Type", "Cache-Control")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        "examples.starlette_app:app", host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            sys.exit("the example server did not start")
        time.sleep(0.05)
    return server


def show(response: httpx2.Response) -> None:
    print(f"HTTP/1.1 {response.status_code} {response.reason_phrase}")
    for name in SHOWN:
        if name in response.headers:
            print(f"{name}: {response.headers[name]}")
    if response.status_code == 429:
        print()
        print(json.dumps(response.json(), indent=2))
    print()


def main() -> int:
    port = free_port()
    server = serve(port)
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}") as client:
            print("ratemw demo: 6 requests to GET /search (limit 5/minute;100/hour)\n")
            statuses = []
            for n in range(1, 7):
                print(f"--- request {n}")
                response = client.get("/search", params={"q": "ratemw"})
                show(response)
                statuses.append(response.status_code)
    finally:
        server.should_exit = True
    if statuses != [200] * 5 + [429]:
        print(f"unexpected statuses: {statuses}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
