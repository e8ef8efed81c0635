"""Checks of what the outbox admin needs from the project: its style sheet served as a
static file (W040)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Warning


def check_admin_static(**kwargs: Any) -> list[CheckMessage]:
    from django.apps import apps

    if not apps.is_installed("django.contrib.admin"):
        return []
    if apps.is_installed("django.contrib.staticfiles"):
        return []
    return [
        Warning(
            "The outbox admin takes its style sheet from the static file "
            "django_outbox/admin.css, and django.contrib.staticfiles is not installed.",
            hint="Add 'django.contrib.staticfiles' to INSTALLED_APPS (and run collectstatic), "
            "or serve django_outbox/static/ at STATIC_URL yourself.",
            id="django_outbox.W040",
        )
    ]
