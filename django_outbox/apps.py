from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class OutboxConfig(AppConfig):
    name = "django_outbox"
    label = "django_outbox"
    verbose_name = _("Outbox")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks as outbox_checks
        from . import metrics
        from .registry import registry

        for check in outbox_checks.ALL:
            checks.register(check, outbox_checks.TAG)
        for check in outbox_checks.DEPLOY:
            checks.register(check, outbox_checks.TAG, deploy=True)
        # Like admin.py for the admin: every installed app's events.py registers its handlers.
        autodiscover_modules("events", register_to=registry)
        metrics.enable_from_settings()
