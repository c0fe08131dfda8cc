"""Settings from NPID_* variables and .env, readable start-up errors, secrets masked in logs."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli import main
from service.settings import SettingsError, load_settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No NPID_* variable from the outside, and a working directory without a .env."""
    import os

    for name in list(os.environ):
        if name.startswith("NPID_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_values_come_from_the_environment(clean_env, dirs):
    collection, store = dirs
    clean_env.setenv("NPID_COLLECTION_ROOT", str(collection))
    clean_env.setenv("NPID_ARTIFACTS_DIR", str(store))
    clean_env.setenv("NPID_MAX_UPLOAD_BYTES", "1000")
    clean_env.setenv("NPID_CORS_ORIGINS", "https://a.example, https://b.example")
    clean_env.setenv("NPID_LOG_LEVEL", "debug")
    clean_env.setenv("NPID_API_KEY", "k")
    s = load_settings()
    assert (s.collection_root, s.artifacts_dir) == (collection.resolve(), store.resolve())
    assert s.max_upload_bytes == 1000 and s.log_level == "DEBUG"
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key.get_secret_value() == "k" and s.device == "cpu"


def test_dotenv_file_is_read(clean_env, dirs, tmp_path):
    collection, store = dirs
    (tmp_path / ".env").write_text(f"NPID_COLLECTION_ROOT={collection}\nNPID_ARTIFACTS_DIR={store}\n"
                                   "NPID_RATE_LIMIT_PER_MINUTE=7\n")
    assert load_settings().rate_limit_per_minute == 7


def test_missing_directories_are_one_clear_error(clean_env, tmp_path):
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert str(e.value) == ("invalid service settings:\n"
                            "  NPID_COLLECTION_ROOT: required (set it in the environment or .env)\n"
                            "  NPID_ARTIFACTS_DIR: required (set it in the environment or .env)")
    clean_env.setenv("NPID_COLLECTION_ROOT", str(tmp_path / "nope"))
    clean_env.setenv("NPID_ARTIFACTS_DIR", str(tmp_path))
    with pytest.raises(SettingsError, match=f"NPID_COLLECTION_ROOT: {tmp_path / 'nope'} is not an existing"):
        load_settings()


def test_inconsistent_limits_are_refused(clean_env, dirs):
    collection, store = dirs
    with pytest.raises(SettingsError, match="max_pixels must be <= Pillow's MAX_IMAGE_PIXELS"):
        load_settings(collection_root=collection, artifacts_dir=store, max_pixels=10**9)
    with pytest.raises(SettingsError, match="protect_reads needs an api_key"):
        load_settings(collection_root=collection, artifacts_dir=store, protect_reads=True)
    with pytest.raises(SettingsError, match="NPID_MAX_UPLOAD_BYTES"):
        load_settings(collection_root=collection, artifacts_dir=store, max_upload_bytes=0)


def test_serve_reports_bad_settings_without_a_traceback(clean_env, capsys):
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "NPID_COLLECTION_ROOT: required" in err and "Traceback" not in err


def test_settings_are_logged_with_secrets_masked(make_settings, caplog):
    settings = make_settings(api_key="very-secret", redis_url="redis://user:hunter2@redis:6379/0")
    with caplog.at_level(logging.INFO, logger="service"), TestClient(create_app(settings)):
        pass
    text = caplog.text
    assert "settings:" in text and "'api_key': '***'" in text and "redis://user:***@redis:6379/0" in text
    assert "very-secret" not in text and "hunter2" not in text
