"""Issue 14: evaluation progress and Ctrl-C, non-finite checkpoints, `list` kinds, stale
results after a resume, and export / run output paths that the system refuses."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from natkit import progress as progress_module
from natkit.checkpoint import load_checkpoint, save_checkpoint
from natkit.cli import app
from natkit.evaluation import protocol
from natkit.progress import EvalProgress, Phase
from natkit.testing import tiny_args

runner = CliRunner()


def one_error(result, exit_code: int = 2) -> str:
    """The single 'error: ...' line of a failed command (and no traceback)."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def trained(tmp_path: Path, *extra: str, evaluate: bool = False, name: str = "run") -> Path:
    run_dir = tmp_path / name
    args = ["run", "--out", str(run_dir), *tiny_args("train.epochs=1", *extra)]
    result = runner.invoke(app, args if evaluate else [*args, "--no-eval"])
    assert result.exit_code == 0, result.output
    return run_dir


# ---------------------------------------------------------------- 1. evaluation progress


def test_every_phase_of_the_evaluation_is_announced_without_a_terminal(host, tmp_path,
                                                                       monkeypatch):
    run_dir = trained(tmp_path)
    monkeypatch.setattr(progress_module, "HEARTBEAT_SECONDS", 0.0)  # every unit prints
    result = runner.invoke(app, ["eval", str(run_dir)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    for expected in [
        # both networks get their BatchNorm statistics recomputed before their features
        "evaluating: recalibrating BatchNorm and extracting features (trained) ...",
        "evaluating: recalibrating BatchNorm and extracting features (random_init) ...",
        "evaluating: linear probe (trained): L2 strength 0.0001 on the validation split (1/3)",
        "evaluating: linear probe (trained): L2 strength 0.01 on the validation split (2/3)",
        "evaluating: MLP probe (trained): weight decay 0.001, 3 epochs on the validation split",
        "evaluating: MLP probe (trained), weight decay 0.001, 3 epochs on the validation split "
        "(1/2): 1/6 epochs",
        "evaluating: kNN probe (trained) ...",
        "evaluating: linear probe (random_init): L2 strength",
        "evaluating: kNN probe (random_init) ...",
        "evaluating: drawing loss.png, filters.png, neighbours.png ...",
    ]:
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    # once every kind of phase still to come has been timed, each line says what is left
    assert lines[-2].endswith(" left)"), lines
    assert lines[-1].startswith("evaluated in ")
    assert "evaluating" not in result.stdout  # the table alone goes to stdout


def test_the_remaining_time_comes_from_the_timed_phases_of_the_same_kind():
    now = [0.0]
    stream = io.StringIO()
    phases = [Phase("a/trained", "probe (trained)", "probe", 4, "fits"),
              Phase("b/trained", "other (trained)", "other", 2, "fits"),
              Phase("a/random", "probe (random)", "probe", 4, "fits"),
              Phase("plots", "plots", "plots", 1, announce_steps=False, estimated=False)]
    with EvalProgress(Console(file=stream, width=200), phases, clock=lambda: now[0]) as p:
        p.phase("a/trained")
        assert p.remaining() is None  # nothing timed yet
        for _ in range(4):
            now[0] += 5.0
            p.advance()
        p.phase("b/trained")
        assert p.remaining() is None  # 'other' has not been timed
        now[0] += 3.0
        p.advance()
        assert p.remaining() == pytest.approx(3.0 + 4 * 5.0)  # one 'other' fit, four probe fits
        p.step("the last fit")
        now[0] += 3.0
        p.advance()
        p.phase("a/random")
        p.step("fit 1/4")
        assert p.finish() == pytest.approx(26.0)
    text = stream.getvalue()
    assert "evaluating: probe (random): fit 1/4 ... (about 20 s left)" in text
    assert "evaluating: other (trained): the last fit ... (about 23 s left)" in text


def test_on_a_terminal_the_evaluation_shows_rich_bars_not_lines(host, tmp_path):
    run_dir = trained(tmp_path)
    stream = io.StringIO()
    terminal = Console(file=stream, force_terminal=True, width=120)
    protocol.evaluate_run(run_dir, console=Console(file=io.StringIO()), progress=terminal)
    text = stream.getvalue()
    assert "linear probe (trained)" in text and "MLP probe (random_init)" in text
    assert "evaluating: " not in text
    assert "evaluated in" in text


def test_ctrl_c_during_evaluation_keeps_the_previous_results_and_exits_130(host, tmp_path,
                                                                           monkeypatch):
    run_dir = trained(tmp_path, evaluate=True)
    before = (run_dir / "results.json").read_bytes()
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(protocol, "mlp_probe", interrupted)
    result = runner.invoke(app, ["eval", str(run_dir)])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"interrupted: evaluation stopped; {run_dir / 'checkpoint.pt'} is intact and "
                    f"the previous results.json is kept; evaluate again with: natkit eval {run_dir}")
    assert (run_dir / "results.json").read_bytes() == before
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint
    assert not list(run_dir.glob(".*.tmp-*"))


def test_ctrl_c_during_the_evaluation_of_a_run_says_no_results_were_written(host, tmp_path,
                                                                            monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(protocol, "knn_probe", interrupted)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["run", "--out", str(run_dir), *tiny_args("train.epochs=1")])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"interrupted: evaluation stopped; {run_dir / 'checkpoint.pt'} is intact and "
        "results.json was not written")
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert not (run_dir / "results.json").exists()


# SIGTERM stops an evaluation as Ctrl-C does (before, it died silently and left the feature
# files behind): the features are removed and one line says so
@pytest.mark.parametrize("sent, code, cause", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_real_signal_during_natkit_eval(host, tmp_path, sent, code, cause):
    run_dir = trained(tmp_path, "eval.mlp_epochs=100000")  # an MLP probe that runs for ever
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "natkit", "eval", str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = threading.Timer(120, proc.kill)  # no progress line: it would never stop
    deadline.start()
    seen, rest = [], ""
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("evaluating: MLP probe (trained)"):
                assert list(run_dir.glob(".eval-features-*")), "the features are on disk"
                proc.send_signal(sent)
                break
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        deadline.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, (seen, rest)
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].startswith(f"{cause}: evaluation stopped; ")
    assert "results.json was not written" in rest
    assert not (run_dir / "results.json").exists()
    assert not list(run_dir.glob(".eval-features-*"))


# ---------------------------------------------------------------- 2. non-finite checkpoints


@pytest.mark.parametrize("tensor, value", [("backbone.conv1.0.weight", float("nan")),
                                           ("backbone.conv2.1.running_var", float("inf"))])
def test_a_checkpoint_with_non_finite_values_is_neither_evaluated_nor_exported(
        host, tmp_path, tensor, value):
    run_dir = trained(tmp_path)
    path = run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    state["model"][tensor].view(-1)[0] = value
    save_checkpoint(state, path)
    kind = "NaN" if value != value else "infinite"
    error = one_error(runner.invoke(app, ["eval", str(run_dir)]))
    assert f"checkpoint '{path}' holds {kind} values in '{tensor}' (1 of " in error
    assert "it cannot be evaluated" in error
    assert not (run_dir / "results.json").exists()
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out",
                                          str(tmp_path / "bb.pt")]))
    assert f"checkpoint '{path}' holds {kind} values in '{tensor}'" in error
    assert "it cannot be exported" in error
    assert not (tmp_path / "bb.pt").exists() and not (tmp_path / "bb.pt.json").exists()


# ---------------------------------------------------------------- 3. list kinds


@pytest.mark.parametrize("kind, expected", [
    ("solver", "hungarian"), ("solvers", "hungarian"), ("backbone", "alexnet"),
    ("target", "sphere"), ("targets", "basis"), ("preprocess", "sobel"),
    ("preprocessor", "highpass"), ("dataset", "shapes"), ("Datasets", "digits"),
])
def test_list_accepts_singular_and_plural_kinds(host, kind, expected):
    result = runner.invoke(app, ["list", kind], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert expected in result.output


@pytest.mark.parametrize("kind, suggestion", [("solvr", "solver"), ("backbnes", "backbones"),
                                              ("preprocesor", "preprocessor"), ("widgets", None)])
def test_list_of_an_unknown_kind_suggests_the_closest(host, kind, suggestion):
    error = one_error(runner.invoke(app, ["list", kind]))
    assert error.startswith(f"error: unknown kind '{kind}'")
    if suggestion:
        assert f"(did you mean '{suggestion}'?)" in error
    else:
        assert "did you mean" not in error
    assert "valid: methods, backbones, targets, solvers, preprocessors, datasets, presets" in error
    assert ("(or the singular: method, backbone, target, solver, preprocess, dataset, preset)"
            in error)


# ---------------------------------------------------------------- 4. stale results


PLOTS = ("loss.png", "filters.png", "neighbours.png")


def test_a_resumed_run_that_trains_without_evaluating_moves_the_old_results_aside(host,
                                                                                  tmp_path):
    run_dir = trained(tmp_path, evaluate=True)
    old = (run_dir / "results.json").read_text()
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--epochs", "2", "--no-eval"])
    assert result.exit_code == 0, result.output
    for name in ("results.json", "eval.json", *PLOTS):
        assert not (run_dir / name).exists(), name
    assert (run_dir / "results.stale.json").read_text() == old
    assert json.loads((run_dir / "eval.stale.json").read_text())["epochs_trained"] == 1
    assert all((run_dir / name.replace(".png", ".stale.png")).is_file() for name in PLOTS)
    moved = [line for line in result.stderr.splitlines() if "moved the previous evaluation" in line]
    assert len(moved) == 1 and "results.json -> results.stale.json" in moved[0]
    assert f"evaluate this one with: natkit eval {run_dir}" in moved[0]
    # evaluating again writes results of the new checkpoint beside the stale ones
    again = runner.invoke(app, ["eval", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "eval.json").read_text())["epochs_trained"] == 2


def test_a_resume_that_trains_nothing_keeps_the_results(host, tmp_path):
    run_dir = trained(tmp_path, evaluate=True)
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--no-eval"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "results.json").is_file() and not (run_dir / "results.stale.json").exists()
    assert "moved the previous evaluation" not in result.stderr


# ---------------------------------------------------------------- 5. export --out


def test_export_refuses_to_overwrite_without_force(host, tmp_path):
    run_dir = trained(tmp_path)
    out = tmp_path / "bb.pt"
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(out)]).exit_code == 0
    out.write_bytes(b"precious")
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out", str(out)]))
    assert error == f"error: --out: '{out}' already exists; use --force to overwrite it"
    assert out.read_bytes() == b"precious"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert torch.load(out, weights_only=True)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_a_sidecar_that_exists(host, tmp_path):
    run_dir = trained(tmp_path)
    (tmp_path / "bb.pt.json").write_text("{}")
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out",
                                          str(tmp_path / "bb.pt")]))
    assert f"--out: '{tmp_path / 'bb.pt.json'}' already exists" in error
    assert not (tmp_path / "bb.pt").exists()


def test_export_to_a_directory_is_one_line(host, tmp_path):
    run_dir = trained(tmp_path)
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path)]))
    assert error.startswith(f"error: --out: '{tmp_path}' is a directory; give the file to write")


def test_a_failed_export_write_keeps_the_previous_file_and_leaves_no_temporary(
        host, tmp_path, monkeypatch):
    from natkit import files

    run_dir = trained(tmp_path)
    out = tmp_path / "bb.pt"
    out.write_bytes(b"previous")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--force"]))
    assert error == (f"error: --out: cannot write '{out}': no space is left on the device; "
                     "the previous file is kept")
    assert out.read_bytes() == b"previous" and not (tmp_path / "bb.pt.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb.pt", "run"]


# ---------------------------------------------------------------- 6. refused output paths


LONG = "n" * 300


def refused_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    return {
        "name over 255 bytes": (tmp_path / LONG / "x", "the name 'nnnnnnnnnnnnnnnnnnnnnnnn...' is "
                                                       "300 bytes; the limit is 255"),
        "/proc": (Path("/proc/natkit-test/x"),
                  "a directory on the path is missing and cannot be created there"),
        "/sys": (Path("/sys/natkit-test/x"), ""),
    }


@pytest.mark.parametrize("case", ["name over 255 bytes", "/proc", "/sys"])
def test_run_out_that_the_system_refuses_is_one_line(host, tmp_path, case):
    path, reason = refused_paths(tmp_path)[case]
    if not path.parts[1] or not Path("/" + path.parts[1]).is_dir():
        pytest.skip(f"no /{path.parts[1]} here")
    error = one_error(runner.invoke(app, ["run", "--out", str(path), *tiny_args()]))
    assert error.startswith(f"error: --out: cannot write '{path}': "), error
    assert reason in error


@pytest.mark.parametrize("case", ["name over 255 bytes", "/proc", "/sys"])
def test_export_out_that_the_system_refuses_is_one_line(host, tmp_path, case):
    path, reason = refused_paths(tmp_path)[case]
    if not Path("/" + path.parts[1]).is_dir():
        pytest.skip(f"no /{path.parts[1]} here")
    run_dir = trained(tmp_path)
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out", str(path)]))
    assert error.startswith(f"error: --out: cannot write '{path}': "), error
    assert reason in error


def test_a_long_export_file_name_whose_description_name_is_too_long(host, tmp_path):
    run_dir = trained(tmp_path)
    out = tmp_path / ("b" * 250 + ".pt")  # 253 bytes fit; its .json sidecar (258) does not
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out", str(out)]))
    assert error.startswith(f"error: --out: cannot write '{out}': the name 'bbbb")
    assert "is 258 bytes; the limit is 255" in error
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_one_line(host, tmp_path):
    run_dir = trained(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        error = one_error(runner.invoke(app, ["export", str(run_dir), "--out",
                                              str(locked / "bb.pt")]))
        assert error == f"error: --out: cannot write '{locked / 'bb.pt'}': permission denied"
        error = one_error(runner.invoke(app, ["run", "--out", str(locked / "r"), *tiny_args()]))
        assert error == f"error: --out: cannot write '{locked / 'r'}': permission denied"
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "the file system is read-only"),
                                          (errno.EACCES, "permission denied")])
def test_a_read_only_place_for_the_run_directory_is_one_line(host, tmp_path, monkeypatch, code,
                                                              reason):
    real_mkdir = Path.mkdir
    target = tmp_path / "ro" / "run"

    def mkdir(self, *args, **kwargs):
        if self == target:
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    error = one_error(runner.invoke(app, ["run", "--out", str(target), *tiny_args()]))
    assert error == f"error: --out: cannot write '{target}': {reason}"


def test_a_read_only_file_system_under_export_is_one_line(host, tmp_path, monkeypatch):
    from natkit import files

    run_dir = trained(tmp_path)
    out = tmp_path / "bb.pt"

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(files, "open", read_only, raising=False)
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out", str(out)]))
    assert error == (f"error: --out: cannot write '{out}': the file system is read-only; "
                     "nothing was written")


def test_a_full_disk_during_training_names_the_option(host, tmp_path, monkeypatch):
    from natkit import files

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    run_dir = tmp_path / "run"
    error = one_error(runner.invoke(app, ["run", "--out", str(run_dir), "--no-eval",
                                          *tiny_args()]))
    assert error.startswith("error: --out: ")
    assert str(run_dir) in error
