"""Test settings: the suite brings its own Postgres+pgvector and Valkey.

Tests never use DATABASE_URL/REDIS_URL (they may name a server somebody cares about, and the
suite flushes what it uses). They start embedded servers in a temporary directory, owned by the
pytest process, unless SLUICE_TEST_DATABASE_URL/SLUICE_TEST_REDIS_URL name servers to use
(the live-server subprocesses receive those from the pytest process).
"""

from __future__ import annotations

import dj_database_url

from config import env
from config.embedded import test_services
from config.settings.base import *  # noqa: F403
from config.settings.base import (
    CACHES,
    CHANNEL_LAYERS,
    DATABASES,
    LOGGING,
    SLUICE_DB_CONNECT_TIMEOUT_S,
    STORAGES,
    channel_layer_hosts,
    db_pool_options,
)

TEST_DATABASE_URL, REDIS_URL = test_services()

DATABASES["default"] = dict(dj_database_url.parse(TEST_DATABASE_URL, conn_max_age=0, conn_health_checks=True))
DATABASES["default"]["OPTIONS"] = {"pool": db_pool_options(), "connect_timeout": SLUICE_DB_CONNECT_TIMEOUT_S}
DATABASES["default"]["TEST"] = {"NAME": env.get_str("SLUICE_TEST_DATABASE_NAME", "test_sluice")}
CACHES = {"default": {**CACHES["default"], "LOCATION": REDIS_URL}}
CHANNEL_LAYERS = {
    "default": {
        **CHANNEL_LAYERS["default"],
        "CONFIG": {"hosts": channel_layer_hosts(REDIS_URL), "prefix": "sluice:asgi"},
    }
}
CELERY_BROKER_URL = REDIS_URL

# Tests collect no static files: serve them from the apps' directories, unhashed.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
SERVESTATIC_USE_FINDERS = True

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast; test users only
SLUICE_JOB_LEASE_S = env.get_float("SLUICE_JOB_LEASE_S", 4.0)
SLUICE_RECONCILE_INTERVAL_S = env.get_float("SLUICE_RECONCILE_INTERVAL_S", 1.0)
SLUICE_TORCH_THREADS = env.get_int("SLUICE_TORCH_THREADS", 1)
LOG_LEVEL = env.get_str("SLUICE_LOG_LEVEL", "WARNING")
LOGGING = {**LOGGING, "root": {"handlers": ["console"], "level": LOG_LEVEL}}
