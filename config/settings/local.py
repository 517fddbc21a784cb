"""`make run` and manage.py's default: production-shaped on a single machine.

DEBUG is off, static files are collected and served hashed and compressed, the secret key is
random and kept in the var dir, and `manage.py check --deploy` is clean. Development opts in
with SLUICE_DEBUG=1 (`make dev`): Django's debug pages for the admin and console, static files
from the apps' directories. The API answers JSON errors either way (config/urls.py).

Embedded servers unless DATABASE_URL/REDIS_URL are set.
"""

from __future__ import annotations

from config import env
from config.settings.base import *  # noqa: F403

DEBUG = env.debug()
if not env.get_opt("DJANGO_SECRET_KEY"):
    SECRET_KEY = env.local_secret_key()

if not DEBUG and env.get_str("SLUICE_HOST", "127.0.0.1") in ("127.0.0.1", "localhost", "::1"):
    # `make run` answers plain HTTP on a loopback address: HTTPS redirects, HSTS and
    # HTTPS-only cookies would lock the admin's login out of its own machine. A deployment
    # ends TLS in front (config/settings/production.py turns all four on); bound to any other
    # address these checks speak again.
    SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008", "security.W012", "security.W016"]
