"""History sent again: ``manage.py outbox_replay`` and the archive of ``outbox_prune``.

``selection.py`` (which rows: window, types, keys, ids, statuses), ``progress.py``
(the command's progress line), ``archive.py`` (the JSON Lines archive that
``outbox_prune --archive`` writes and ``outbox_replay --from-archive`` reads),
``replay.py`` (``Replayer``: rows to Kafka again, resumable, recorded in
``models.ReplayRun``). See docs/replay.rst.
"""
