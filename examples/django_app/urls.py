"""- ``search/``: 5 a minute and 100 an hour per caller (a class-based view);
- ``items/<int:item_id>/``: 2 a minute, one bucket for every item;
- ``stream/``: streamed, passed through untouched (the default limit, 20 a minute);
- ``health/``: never limited.
"""

from __future__ import annotations

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("search/", views.SearchView.as_view()),
    path("items/<int:item_id>/", views.item),
    path("stream/", views.stream),
    path("health/", views.health),
]
