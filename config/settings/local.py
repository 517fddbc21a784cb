"""Developer machine: `make run`. Embedded servers unless DATABASE_URL/REDIS_URL are set."""

from __future__ import annotations

from config import env
from config.settings.base import *  # noqa: F403

DEBUG = env.get_bool("DJANGO_DEBUG", True)
