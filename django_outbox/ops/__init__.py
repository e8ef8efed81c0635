"""What operators see of the pipeline: ``status`` (what ``outbox_status`` reports),
``health`` (a worker's liveness file), ``metrics`` (Prometheus) and ``tracing``
(OpenTelemetry).

The workers and the publisher report through this package, so it imports only the
models and the core modules, never a worker, Kafka or the admin.
"""
