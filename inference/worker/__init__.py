"""The worker process: what a Celery GPU worker holds and does besides running tasks.

- ``signals``: the Celery lifecycle (load the versions before consuming, stop after the pool).
- ``runtime``: the loaded versions (a backend and an engine each), their queues (consume,
  cancel), the sync loop that follows the registry, the reconciler loop.
- ``backends``: which backend class a version's ``backend`` kind builds (a registry).
- ``heartbeat``: the one writer and the one reader of workers' heartbeats in Redis.
- ``metrics_server``: a worker's own /metrics endpoint.

Importing this package loads nothing heavy: the web process reads heartbeats through
``heartbeat`` without loading the engine.
"""
