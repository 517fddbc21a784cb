"""config.env: the one reader of the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import env


def test_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_X_INT", "12")
    monkeypatch.setenv("SLUICE_X_BOOL", "yes")
    monkeypatch.setenv("SLUICE_X_LIST", "a, b,,c")
    assert env.get_int("SLUICE_X_INT", 0) == 12
    assert env.get_bool("SLUICE_X_BOOL", False) is True
    assert env.get_list("SLUICE_X_LIST", []) == ["a", "b", "c"]
    assert env.get_int("SLUICE_X_MISSING", 7) == 7
    monkeypatch.setenv("SLUICE_X_INT", "twelve")
    with pytest.raises(ValueError, match="SLUICE_X_INT"):
        env.get_int("SLUICE_X_INT", 0)


def test_secrets_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    monkeypatch.setenv("DJANGO_SECRET_KEY_FILE", str(secret))
    assert env.get_str("DJANGO_SECRET_KEY", "default") == "s3cret"


def test_embedded_urls_come_from_the_services_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLUICE_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    env._embedded_urls.cache_clear()
    try:
        assert env.database_url() is None
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "services.env").write_text(
            "DATABASE_URL=postgresql://x/y\nREDIS_URL=redis://h:1/0\n"
        )
        env._embedded_urls.cache_clear()
        assert env.database_url() == "postgresql://x/y"
        assert env.redis_url() == "redis://h:1/0"
        monkeypatch.setenv("REDIS_URL", "redis://explicit:2/0")
        assert env.redis_url() == "redis://explicit:2/0"  # the environment wins
    finally:
        env._embedded_urls.cache_clear()
