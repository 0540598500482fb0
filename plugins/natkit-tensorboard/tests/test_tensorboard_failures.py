"""A logger that fails costs one warning, never the run: it finishes with its checkpoint and results."""

from __future__ import annotations

import errno
import json
import sys
import warnings
from pathlib import Path

from natkit_tensorboard.plugin import LOG_DIR, LoggingStopped
from rich.console import Console
from tensorboard.backend.event_processing import event_accumulator as ea

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


def test_a_file_where_the_log_directory_goes(tiny_config, tmp_path):
    out = tmp_path / "run"
    messages = run_warning(tiny_config(), out, lambda d: (d / LOG_DIR).write_text("not a directory"))
    assert len(messages) == 1
    assert messages[0].startswith("natkit-tensorboard: logging stopped: ")
    assert str(out / LOG_DIR) in messages[0] and "\n" not in messages[0]
    assert (out / LOG_DIR).read_text() == "not a directory"


def test_tensorboard_failing_to_import(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    messages = run_warning(tiny_config(), tmp_path / "run")
    assert len(messages) == 1
    assert messages[0].startswith("natkit-tensorboard: logging stopped: cannot import TensorBoard")
    assert "pip install tensorboard" in messages[0]
    assert not (tmp_path / "run" / LOG_DIR).exists()


def test_a_writer_failing_mid_run(tiny_config, tmp_path, monkeypatch):
    """The disk fills at step 5: one warning, the events before it kept, nothing logged after."""
    from torch.utils.tensorboard import SummaryWriter

    add_scalar = SummaryWriter.add_scalar

    def full_disk(self, tag, value, step, *args, **kwargs):
        if step >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return add_scalar(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    messages = run_warning(tiny_config(), tmp_path / "run")
    assert messages == ["natkit-tensorboard: logging stopped: no space is left on the device; "
                        "the run goes on without it"]
    acc = ea.EventAccumulator(str(tmp_path / "run" / LOG_DIR), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]
    assert max(e.step for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)) == 4
    assert acc.Tags()["images"] == []  # the evaluation came after logging stopped


def test_logging_stops_for_one_run_only(tiny_config, tmp_path):
    """Stopping is per run: the next run in the same process logs again."""
    spoil = lambda d: (d / LOG_DIR).write_text("")  # noqa: E731
    assert len(run_warning(tiny_config(), tmp_path / "bad", spoil, evaluate=False)) == 1
    assert run_warning(tiny_config(), tmp_path / "next", evaluate=False) == []
    acc = ea.EventAccumulator(str(tmp_path / "next" / LOG_DIR), size_guidance={ea.SCALARS: 0})
    assert [e.step for e in acc.Reload().Scalars("epoch/loss")] == [4, 8]
