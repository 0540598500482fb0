"""A logger that fails costs one warning, never the run: it finishes with its checkpoint and results."""

from __future__ import annotations

import errno
import json
import sys
import warnings
from pathlib import Path

import wandb
from natkit_wandb.plugin import LOG_DIR, LoggingStopped
from rich.console import Console

from natkit import lifecycle


def run_warning(config, run_dir: Path, before=None, evaluate: bool = True) -> list[str]:
    """The plugin's warnings from the tiny run (``before(run_dir)`` once its directory exists)."""
    run = lifecycle.start(config, run_dir, console=Console(stderr=True, quiet=True))
    if before is not None:
        before(run_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = lifecycle.execute(run, evaluate=evaluate, console=Console(quiet=True),
                                    progress=Console(quiet=True))
    assert outcome.finished and (run_dir / "checkpoint.pt").is_file()
    if evaluate:
        assert json.loads((run_dir / "results.json").read_text()) == outcome.results
    return [str(w.message) for w in caught if issubclass(w.category, LoggingStopped)]


def test_a_file_where_the_wandb_directory_goes(tiny_config, tmp_path):
    out = tmp_path / "run"
    messages = run_warning(tiny_config(), out, lambda d: (d / LOG_DIR).write_text("not a directory"))
    assert len(messages) == 1
    assert messages[0].startswith("natkit-wandb: logging stopped: ")
    assert str(out / LOG_DIR) in messages[0] and "\n" not in messages[0]
    assert (out / LOG_DIR).read_text() == "not a directory"


def test_wandb_failing_to_import(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    messages = run_warning(tiny_config(), tmp_path / "run")
    assert len(messages) == 1
    assert messages[0].startswith("natkit-wandb: logging stopped: cannot import wandb")
    assert "pip install wandb" in messages[0]
    assert not (tmp_path / "run" / LOG_DIR).exists()


def test_online_mode_without_an_api_key_never_prompts(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # and no key (see conftest): wandb would prompt
    messages = run_warning(tiny_config(), tmp_path / "run", evaluate=False)
    assert messages == ["natkit-wandb: logging stopped: NotLoggedIn: WANDB_MODE=online but no W&B "
                        "API key is configured; log in with `wandb login` or set WANDB_API_KEY; "
                        "the run goes on without it"]
    assert not (tmp_path / "run" / LOG_DIR).exists()  # decided before W&B was started


def test_wandb_disabled_starts_nothing(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert run_warning(tiny_config(), tmp_path / "run", evaluate=False) == []
    assert not (tmp_path / "run" / LOG_DIR).exists()


def test_wandb_failing_mid_run(tiny_config, tmp_path, monkeypatch, wandb_sessions):
    """wandb raises at step 5 (here: a full disk): one warning, the W&B run finished as failed."""
    log = wandb.Run.log

    def full_disk(self, data, step=None, *args, **kwargs):
        if step is not None and step >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return log(self, data, step, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", full_disk)
    messages = run_warning(tiny_config(), tmp_path / "run")
    assert messages == ["natkit-wandb: logging stopped: no space is left on the device; "
                        "the run goes on without it"]
    [session] = wandb_sessions(tmp_path / "run")
    assert max(session.history) == 4 and session.exit_code == 1
    assert not any(key.startswith(("probe/", "plots/")) for key in session.summary)


def test_logging_stops_for_one_run_only(tiny_config, tmp_path, wandb_sessions):
    """Stopping is per run: the next run in the same process logs again."""
    spoil = lambda d: (d / LOG_DIR).write_text("")  # noqa: E731
    assert len(run_warning(tiny_config(), tmp_path / "bad", spoil, evaluate=False)) == 1
    assert run_warning(tiny_config(), tmp_path / "next", evaluate=False) == []
    [session] = wandb_sessions(tmp_path / "next")
    assert sorted(s for s, row in session.history.items() if "epoch/loss" in row) == [4, 8]
