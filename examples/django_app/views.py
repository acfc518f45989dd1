"""Views of the example project, limited with ``@limiter.limit`` and friends."""

from __future__ import annotations

from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views import View

from examples.django_app.limits import limiter


class SearchView(View):
    @limiter.limit("5/minute;100/hour")
    def get(self, request: HttpRequest) -> HttpResponse:
        return JsonResponse({"query": request.GET.get("q", ""), "results": []})


@limiter.limit("2/minute")
def item(request: HttpRequest, item_id: int) -> HttpResponse:
    return JsonResponse({"id": item_id})


def stream(request: HttpRequest) -> HttpResponse:
    def lines() -> Iterator[str]:
        for n in range(3):
            yield f"tick {n}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")


@limiter.exempt
def health(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})
