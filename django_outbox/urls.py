"""URLs of the app for web processes: ``path("outbox/", include("django_outbox.urls"))``."""

from __future__ import annotations

from django.urls import path

from django_outbox.ops.metrics import metrics_view

app_name = "django_outbox"

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
]
