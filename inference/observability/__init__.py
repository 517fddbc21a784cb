"""Observability, recording apart from export (as vLLM keeps ``v1/metrics/stats.py`` apart from
its loggers):

- ``recording``: what the web and the engines count, as it happens (``record_*``, the engine's
  ``EngineMetrics``, ``UpstreamMetrics``), buffered in memory and added to Redis every second;
- ``export``: the Prometheus collectors that show it (the fleet's sums, live gauges);
- ``timeseries``: the console's rolling series (10 s, 1 min and 10 min buckets in Redis);
- ``usage``: the usage rows a finished job leaves (tokens and cost per user, key and day).
"""
