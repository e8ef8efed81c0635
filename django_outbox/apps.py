"""The app: its system checks, its metrics switch and the discovery of ``events`` modules
(the handlers), done once Django is ready."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


def uses_outbox_tasks() -> bool:
    """Whether a backend of ``settings.TASKS`` is ``django_outbox.tasks.OutboxBackend``."""
    backends = getattr(settings, "TASKS", None) or {}
    return any(
        str(config.get("BACKEND", "")).startswith("django_outbox.tasks")
        for config in backends.values()
        if isinstance(config, dict)
    )


class OutboxConfig(AppConfig):
    name = "django_outbox"
    label = "django_outbox"
    verbose_name = _("Outbox")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_outbox import checks as outbox_checks
        from django_outbox.ops import metrics
        from django_outbox.registry import registry

        for check in outbox_checks.ALL:
            checks.register(check, outbox_checks.TAG)
        for check in outbox_checks.DEPLOY:
            checks.register(check, outbox_checks.TAG, deploy=True)
        # Like admin.py for the admin: every installed app's events.py registers its handlers.
        autodiscover_modules("events", register_to=registry)
        if uses_outbox_tasks():
            # Declaring a task on OutboxBackend registers the handler that runs it
            # (django_outbox/tasks/running.py): the consumer needs every task declared.
            autodiscover_modules("tasks")
        metrics.enable_from_settings()
