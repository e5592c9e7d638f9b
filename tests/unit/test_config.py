"""Settings, database URLs and the secret key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from pygrid.config import AppKind, ServerSettings, settings_from_env
from pygrid.db.engine import DatabaseURLError, mask_database_url, normalise_database_url
from pygrid.secret_key import SecretKeyError, load_or_create_secret_key


def test_defaults_then_environment_then_overrides(tmp_path: Path) -> None:
    env = {"GRID_NODE_PORT": "5100", "NODE_ID": "alice", "NETWORK": "http://127.0.0.1:7000/"}
    settings = settings_from_env(AppKind.node, {"port": 5200}, environ=env)
    assert settings.port == 5200
    assert settings.id == "alice"
    assert settings.network_url == "http://127.0.0.1:7000"
    assert settings.data_dir.name == "alice"
    network = settings_from_env(AppKind.network, environ={"GRID_NETWORK_PORT": "7100"})
    assert (network.port, network.id) == (7100, "network")


def test_embedded_defaults_are_sqlite_and_a_local_folder(tmp_path: Path) -> None:
    settings = ServerSettings(app="node", id="bob", port=5000, data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'node.db'}"
    assert settings.resolved_blob_url == str(tmp_path / "blobs")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("colour", "red"),
        ("port", 0),
        ("port", 70000),
        ("id", "../etc"),
        ("network_url", "ftp://x"),
        ("num_replicas", 0),
    ],
)
def test_bad_settings_are_rejected(tmp_path: Path, field: str, value: object) -> None:
    values = {"app": "node", "id": "n", "port": 5000, "data_dir": tmp_path, field: value}
    with pytest.raises(ValidationError) as excinfo:
        ServerSettings.model_validate(values)
    assert field in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@127.0.0.1:5432/db", "postgresql+psycopg://u:p@127.0.0.1:5432/db"),
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_urls_are_normalised(url: str, expected: str) -> None:
    assert normalise_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "malformed"),
        ("mysql://u@h/db", "supports"),
        ("postgresql://u@h", "no database"),
    ],
)
def test_bad_database_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(DatabaseURLError, match=message):
        normalise_database_url(url)


def test_passwords_never_shown() -> None:
    assert "hunter2" not in mask_database_url("postgresql://u:hunter2@h/db")


def test_secret_key_generated_once_and_private(tmp_path: Path) -> None:
    first = load_or_create_secret_key(tmp_path)
    second = load_or_create_secret_key(tmp_path)
    assert first == second and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600


def test_given_secret_key_wins_and_must_be_long(tmp_path: Path) -> None:
    assert load_or_create_secret_key(tmp_path, "k" * 40) == "k" * 40
    assert not (tmp_path / "secret_key").exists()
    with pytest.raises(SecretKeyError, match="too short"):
        load_or_create_secret_key(tmp_path, "short")
