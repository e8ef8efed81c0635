"""A backend for Django's Tasks framework that runs tasks through the outbox.

``TASKS = {"default": {"BACKEND": "django_outbox.tasks.OutboxBackend"}}``: a task's
``enqueue()`` writes an outbox row in the caller's transaction, ``outbox_consume``
runs the task once, and its result is read back with ``get_result()``. Needs Django
6's ``django.tasks`` or, on Django 5.2, the ``django-tasks`` backport
(``pip install django-outbox[tasks]``). See docs/tasks.rst.
"""

from __future__ import annotations

from django_outbox.tasks.backend import OutboxBackend

__all__ = ["OutboxBackend"]
