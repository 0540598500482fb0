"""The catalogue of bad inputs: each costs the user one line naming the field or file, exit 2.

Every case goes through the real command line, so the exit code and the absence
of a traceback are checked along with the message.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from natkit import lifecycle
from natkit.cli import app
from natkit.testing import TINY

runner = CliRunner()


def sets(*texts: str) -> list[str]:
    return [a for t in (*TINY, *texts) for a in ("--set", t)]


def folder_with(tmp: Path, layout: str) -> str:
    root = tmp / "data"
    root.mkdir()
    if layout in ("empty class", "unreadable"):
        (root / "cat").mkdir()
        if layout == "unreadable":
            (root / "cat" / "a.png").write_bytes(b"junk")
            (root / "cat" / "b.jpg").write_bytes(b"")
        else:
            (root / "cat" / "notes.txt").write_text("no images here")
    return str(root)


def trained_run(tmp: Path) -> Path:
    from natkit import config

    run = lifecycle.start(config.build(overrides=[*TINY, "train.epochs=1"]), tmp / "run")
    run.train()
    return tmp / "run"


CATALOGUE = {
    "unknown solver": (lambda t: ["run", "--solver", "hungarain"],
                       "unknown solver 'hungarain' (did you mean 'hungarian'?); valid: auction, emd"),
    "unknown timm model": (lambda t: ["run", "--backbone", "timm:resnet181"],
                           "unknown timm model 'resnet181' (did you mean 'resnet18'?)"),
    "option a timm model rejects": (lambda t: ["run", "--backbone", "timm:resnet18",
                                               "--set", "backbone.depth=3"],
                                    "backbone 'timm:resnet18': timm rejected the options ['depth']"),
    "unknown preprocessor": (lambda t: ["run", "--preprocess", "sobol"],
                             "unknown preprocess 'sobol' (did you mean 'sobel'?)"),
    "unknown config key": (lambda t: ["run", *sets("train.lrr=0.1")],
                           "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    "unknown component option": (lambda t: ["run", *sets("solver.reg=0.1")],
                                 "solver.reg: solver 'hungarian' has no option 'reg'"),
    "wrong type": (lambda t: ["run", *sets("train.epochs=two")],
                   "train.epochs: expected an integer, got 'two'"),
    "lr <= 0": (lambda t: ["run", *sets("train.lr=0")], "train.lr: expected a value > 0.0"),
    "dim < 1": (lambda t: ["run", *sets("targets.dim=0")], "dim must be >= 1, got 0"),
    "batch < 2": (lambda t: ["run", *sets("train.batch_size=1")],
                  "train.batch_size: expected a value >= 2, got 1"),
    "batch > dataset": (lambda t: ["run", "--out", str(t / "r"), *sets("train.batch_size=65")],
                        "train.batch_size: 65 is larger than the 64 training images"),
    "permute_every < 0": (lambda t: ["run", *sets("method.permute_every=-3")],
                          "method.permute_every: method 'nat': permute_every must be >= 0, got -3"),
    "basis k > dim": (lambda t: ["run", "--targets", "basis", *sets("targets.k=9")],
                      "k must be between 1 and dim=8, got k=9"),
    "unknown eval layer": (lambda t: ["run", "--out", str(t / "r"), *sets("eval.layer=fc9")],
                           "eval.layer: 'fc9' is not a tap of backbone 'alexnet'; valid: conv1"),
    "unknown device": (lambda t: ["run", *sets("device=tpu")],
                       "device: 'tpu' is not a device"),
    "malformed --set value": (lambda t: ["run", "--set", "train.lr=[0.1"],
                              "--set 'train.lr=[0.1': '[0.1' is not a valid YAML value"),
    "--set without a value": (lambda t: ["run", "--set", "train.lr"],
                              "--set 'train.lr': expected key=value"),
    "malformed YAML": (lambda t: ["run", "--config", _write(t / "c.yaml", "train: {lr: 0.1")],
                       "c.yaml' line 1"),
    "YAML that is not a mapping": (lambda t: ["run", "--config", _write(t / "c.yaml", "- 1")],
                                   "c.yaml': expected a mapping of keys, got list"),
    "missing config file": (lambda t: ["run", "--config", str(t / "nope.yaml")],
                            "nope.yaml' does not exist"),
    "missing data root": (lambda t: ["run", "--data", "imagefolder",
                                     "--set", f"data.root={t / 'nowhere'}"],
                          "data.root: '" + "{t}/nowhere' is not a directory"),
    "empty data root": (lambda t: ["run", "--data", "imagefolder",
                                   "--set", f"data.root={folder_with(t, 'empty')}"],
                        "holds no class folders"),
    "class folder without images": (lambda t: ["run", "--data", "imagefolder", "--set",
                                               f"data.root={folder_with(t, 'empty class')}"],
                                    "class folder '{t}/data/cat' holds no images"),
    "only unreadable images": (lambda t: ["run", "--data", "imagefolder", "--set",
                                          f"data.root={folder_with(t, 'unreadable')}"],
                               "data.root: none of the"),
    "missing torchvision files": (lambda t: ["run", "--data", "cifar10",
                                             "--set", f"data.root={t}"],
                                  "data.root: no CIFAR-10 found under"),
    "run directory that is not one": (lambda t: ["eval", str(t)],
                                      "'{t}' is not a natkit run directory (no config.yaml)"),
    "missing run directory": (lambda t: ["run", "--resume", str(t / "gone")],
                              "run directory '{t}/gone' does not exist"),
    "truncated checkpoint": (lambda t: ["eval", str(_truncate(trained_run(t)))],
                             "checkpoint.pt' is truncated or corrupt"),
    "pickled object in a checkpoint": (lambda t: ["eval", str(_poison(trained_run(t)))],
                                       "was refused: it holds pickled objects"),
    "checkpoint of another architecture": (lambda t: ["run", "--resume", str(_swap(t))],
                                           "config.yaml' no longer matches its checkpoint "
                                           "(backbone.widths differs)"),
    "resume with a changed config": (lambda t: ["run", "--resume", str(trained_run(t)),
                                                "--set", "train.lr=0.5"],
                                     "--resume: train.lr differs from the run's config.yaml"),
    "--out of an existing run": (lambda t: ["run", "--out", str(trained_run(t)), *sets()],
                                 "already holds a run; resume it with --resume"),
}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _truncate(run_dir: Path) -> Path:
    path = run_dir / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    return run_dir


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def _poison(run_dir: Path) -> Path:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["extra"] = _Payload()
    torch.save(state, run_dir / "checkpoint.pt")
    return run_dir


def _swap(tmp: Path) -> Path:
    """A run whose checkpoint.pt was copied from a run with a wider network."""
    from natkit import config

    other = lifecycle.start(config.build(overrides=[*TINY, "train.epochs=1",
                                                 "backbone.widths=[4,8,8,8,16]"]), tmp / "wide")
    other.train()
    target = trained_run(tmp)
    shutil.copy(tmp / "wide" / "checkpoint.pt", target / "checkpoint.pt")
    return target


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_costs_one_line_and_exit_code_2(host, tmp_path, case):
    make_args, expected = CATALOGUE[case]
    result = runner.invoke(app, make_args(tmp_path))
    assert result.exit_code == 2, (case, result.output)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    assert expected.format(t=tmp_path) in errors[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(host):
    result = runner.invoke(app, ["run", *sets("device=cuda")])
    assert result.exit_code == 2
    assert "device: 'cuda' requested but CUDA is not available here" in result.stderr
