"""Online or offline: decided from the environment and the netrc file, never by asking anyone."""

from __future__ import annotations

import pytest
from natkit_wandb.login import NotLoggedIn, choose_mode, disabled, logged_in

KEY = "x" * 40  # wandb's API keys are 40 characters (86 on some servers)


def env(tmp_path, **extra: str) -> dict[str, str]:
    """An environment whose netrc file is tmp_path/netrc (absent unless written)."""
    return {"NETRC": str(tmp_path / "netrc"), **extra}


def test_no_credentials_log_offline(tmp_path):
    assert not logged_in(env(tmp_path))
    assert choose_mode(env(tmp_path)) == "offline"


@pytest.mark.parametrize("name", ["WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"])
def test_credentials_in_the_environment_log_online(tmp_path, name):
    assert choose_mode(env(tmp_path, **{name: KEY})) == "online"
    assert choose_mode(env(tmp_path, **{name: ""})) == "offline"  # set but empty: none


def test_a_netrc_entry_for_the_server_logs_online(tmp_path):
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
    assert choose_mode(env(tmp_path)) == "online"
    # an entry for another server is not a login to this one
    assert choose_mode(env(tmp_path, WANDB_BASE_URL="https://wandb.example.com")) == "offline"
    (tmp_path / "netrc").write_text(f"machine wandb.example.com login user password {KEY}\n")
    assert choose_mode(env(tmp_path, WANDB_BASE_URL="https://wandb.example.com")) == "online"


def test_netrc_in_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not logged_in({})
    (tmp_path / ".netrc").write_text(f"machine api.wandb.ai login user password {KEY}\n")
    assert logged_in({})


@pytest.mark.parametrize("text", ["machine api.wandb.ai login user password\n",  # no key
                                  "machine api.wandb.ai login\n",
                                  "machine api.wandb.ai bogus x\n",
                                  "not a netrc file at all\n"])
def test_an_unusable_netrc_file_is_no_login(tmp_path, text):
    (tmp_path / "netrc").write_text(text)
    assert choose_mode(env(tmp_path)) == "offline"


@pytest.mark.parametrize("mode", ["offline", "dryrun", "disabled", "OFFLINE"])
def test_wandb_mode_decides_when_set(tmp_path, mode):
    assert choose_mode(env(tmp_path, WANDB_MODE=mode)) is None
    assert choose_mode(env(tmp_path, WANDB_MODE=mode, WANDB_API_KEY=KEY)) is None
    assert disabled(env(tmp_path, WANDB_MODE=mode)) == (mode == "disabled")


def test_online_mode_needs_credentials(tmp_path):
    assert choose_mode(env(tmp_path, WANDB_MODE="online", WANDB_API_KEY=KEY)) is None
    with pytest.raises(NotLoggedIn, match="WANDB_MODE=online but no W&B API key"):
        choose_mode(env(tmp_path, WANDB_MODE="online"))
