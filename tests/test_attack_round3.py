"""What the third outside attack found (issue 26): each case, and that it now holds.

Each of the attack's cases has a test that failed on the code the attack was run
against (SIGTERM during natkit eval is in test_cli_reliability.py, a stalled rank in
test_distributed.py). A few tests beside them guard what a fix must not take away:
an export may still write a new file into the run directory, a file name with a
backslash keeps its index cache, results name the epoch they describe.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import natkit
import natkit.plugins
from natkit import lifecycle
from natkit.checkpoint import load_checkpoint, save_checkpoint
from natkit.cli import app
from natkit.errors import CheckpointError
from natkit.methods import Method, MethodContext, StepLoss
from natkit.rundir import RunLock
from natkit.testing import tiny_args

runner = CliRunner()


def one_error(result, exit_code: int = 2) -> str:
    """The single error line of a failed command (and no traceback)."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def trained(tmp_path, *extra: str, name: str = "run"):
    run_dir = tmp_path / name
    result = runner.invoke(app, ["run", "--out", str(run_dir), "--no-eval",
                                 *tiny_args("train.epochs=1", *extra)])
    assert result.exit_code == 0, result.output
    return run_dir


# ---------------------------------------------------------------- data loss


@pytest.mark.parametrize("owned", ["checkpoint.pt", "config.yaml", "metrics.jsonl",
                                   "snapshots/epoch-0001.pt", "via-link"])
def test_export_never_writes_over_a_file_the_run_owns(natkit_host, tmp_path, owned):
    run_dir = trained(tmp_path, "train.keep_every=1")
    (run_dir / "via-link").symlink_to(run_dir / "checkpoint.pt")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    out = run_dir / owned
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--force"]))
    assert error.startswith(f"error: --out: '{out}' is inside the run directory '{run_dir}' and "
                            "would replace its file '")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    resumed = lifecycle.resume(run_dir)  # the run still resumes
    resumed.lock.release()


def test_export_may_write_a_new_file_in_the_run_directory_and_replace_it(natkit_host, tmp_path):
    run_dir = trained(tmp_path)
    out = run_dir / "backbone.pt"
    for force in ([], ["--force"]):
        result = runner.invoke(app, ["export", str(run_dir), "--out", str(out), *force])
        assert result.exit_code == 0, result.output
    assert torch.load(out, weights_only=True)


# ---------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_a_resume_refuses_a_checkpoint_with_non_finite_state(tiny_config, tmp_path, where):
    run = lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run")
    assert lifecycle.execute(run, evaluate=False).finished
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    if where == "model":
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name].view(-1)[0] = math.nan
    else:
        buffers = state["optimizer"]["state"]
        buffers[next(iter(buffers))]["momentum_buffer"].view(-1)[0] = math.inf
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=rf"checkpoint '{path}' holds NaN or infinite "
                                              rf"values \({where}"):
        lifecycle.resume(tmp_path / "run", tiny_config("train.epochs=2"))
    assert not RunLock(tmp_path / "run").held


def test_export_refuses_a_checkpoint_that_does_not_fit_the_run_s_config(natkit_host, tmp_path):
    run_dir = trained(tmp_path)
    path = run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    name = next(k for k in state["model"] if k.startswith("backbone.") and k.endswith("weight"))
    state["model"][name] = torch.zeros(3, 3)
    save_checkpoint(state, path)
    error = one_error(runner.invoke(app, ["export", str(run_dir), "--out",
                                          str(tmp_path / "bb.pt")]))
    assert error.startswith(f"error: checkpoint '{path}' does not fit the run's config: "
                            f"'{name}' has shape (3, 3); this config's network has (")
    assert not (tmp_path / "bb.pt").exists()


def test_natkit_eval_refuses_a_run_that_is_still_training(natkit_host, tmp_path):
    run_dir = trained(tmp_path)
    lock = RunLock(run_dir)
    lock.acquire()  # what a training process holds
    try:
        result = runner.invoke(app, ["eval", str(run_dir)])
    finally:
        lock.release()
    error = one_error(result)
    assert error.startswith(f"error: run directory '{run_dir}' is in use by natkit process")
    assert not (run_dir / "results.json").exists()


def _rotated_jpeg(orientation: int) -> bytes:
    """A 16x8 JPEG, left half black and right half white, with an EXIF orientation tag."""
    image = Image.new("RGB", (16, 8), "white")
    image.paste((0, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def test_jpeg_exif_orientation_is_applied_when_images_are_decoded(tmp_path):
    from natkit.datasets.images import load_image

    path = tmp_path / "rotated.jpg"
    path.write_bytes(_rotated_jpeg(6))  # 6: the camera was turned, show it rotated 90 degrees
    pixels = load_image(path, 16)
    assert pixels is not None
    # rotated upright, the black half is on top: the top rows are dark, the bottom bright
    top, bottom = pixels[:, :4].float().mean(), pixels[:, -4:].float().mean()
    assert top < 60 and bottom > 190, (top, bottom)


def test_the_gpu_decode_path_applies_exif_orientation_too():
    from natkit.datasets.gpu_decode import decode_batch

    data = torch.frombuffer(bytearray(_rotated_jpeg(6)), dtype=torch.uint8)
    pixels = decode_batch([data], 16, torch.device("cpu"))[0].float()
    assert pixels[:, :4].mean() < 60 and pixels[:, -4:].mean() > 190


# ---------------------------------------------------------------- messages


def test_an_error_line_never_echoes_a_huge_value_whole(natkit_host):
    huge = "x" * 1_000_000
    error = one_error(runner.invoke(app, ["run", "--set", f"solver.name={huge}"]))
    assert error.startswith("error: ") and len(error) < 1200
    assert "..." in error


def test_results_json_written_by_an_evaluation_names_the_epoch_it_describes(natkit_host,
                                                                            tmp_path):
    run_dir = trained(tmp_path)
    assert runner.invoke(app, ["eval", str(run_dir)]).exit_code == 0
    details = json.loads((run_dir / "eval.json").read_text())
    assert details["epochs_trained"] == 1


# ---------------------------------------------------------------- the index cache is an input


def _folder(root):
    for c in range(2):
        for i in range(3):
            path = root / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 14), (60 * c, 20 * i, 90)).save(path)
    return root


def _tamper(root, change):
    from natkit.datasets.index import folder_index, index_path

    assert not folder_index(root).cached  # built and cached
    path = index_path(root)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _outside(root):
    victim = root.parent / "victim.png"
    Image.new("RGB", (20, 14), (255, 0, 0)).save(victim)
    return victim


TAMPERINGS = {
    "absolute path": lambda d, root: d["classes"][0][1].append(str(_outside(root))),
    "path up and out": lambda d, root: d["classes"][0][1].append(
        f"c0/../../{_outside(root).name}"),
    "file list as a string": lambda d, root: d["classes"][0].__setitem__(1, "c0/0.png"),
    "empty dirs": lambda d, root: d.__setitem__("dirs", {}),
    "nested lists": lambda d, root: d["classes"][0].__setitem__(1, [["c0/0.png"]]),
    "no classes": lambda d, root: d.__setitem__("classes", []),
    "skipped not a list": lambda d, root: d.__setitem__("skipped", {"a": 1}),
}


@pytest.mark.parametrize("tampering", TAMPERINGS, ids=list(TAMPERINGS))
def test_a_cache_that_does_not_validate_is_rebuilt_with_one_warning(tmp_path, monkeypatch,
                                                                    tampering):
    from natkit.datasets.index import IndexCacheWarning, folder_index

    monkeypatch.setenv("NATKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path / "data").resolve()
    _tamper(root, lambda data: TAMPERINGS[tampering](data, root))
    with pytest.warns(IndexCacheWarning, match="is not valid .*; rebuilding it from the folder"):
        index = folder_index(root)
    assert not index.cached
    assert index.classes == [("c0", ["c0/0.png", "c0/1.png", "c0/2.png"]),
                             ("c1", ["c1/0.png", "c1/1.png", "c1/2.png"])]
    assert folder_index(root).cached  # the rebuilt cache is sound


def test_a_changed_class_folder_is_seen_even_if_the_cache_drops_its_time(tmp_path, monkeypatch):
    from natkit.datasets.index import IndexCacheWarning, folder_index

    monkeypatch.setenv("NATKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path / "data").resolve()
    _tamper(root, lambda data: data["dirs"].pop("c1"))
    with pytest.warns(IndexCacheWarning, match="class 'c1' has no folder time"):
        assert not folder_index(root).cached


class Unstable(Method):
    """A method whose label step overflows when its ``temperature`` is too small."""

    def __init__(self, *, context: MethodContext, temperature: float = 1.0) -> None:
        self.head_dim, self.temperature = 4, temperature

    def start_epoch(self, epoch, run):
        if float(torch.exp(run.outputs().abs().max() / self.temperature)) == math.inf:
            raise FloatingPointError("the label step overflowed")
        return None

    def loss(self, outputs, batch):
        return StepLoss(outputs.pow(2).mean())


class UnstablePlugin:
    @natkit.hookimpl
    def register_methods(self, register):
        register("unstable", Unstable)


def test_a_nan_a_method_option_caused_blames_the_method_not_the_learning_rate(natkit_host,
                                                                              tmp_path):
    natkit_host.register(UnstablePlugin(), name="unstable")
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), "--no-eval",
                                 *tiny_args("method=unstable", "method.temperature=1e-30")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = result.stderr.strip().splitlines()[-1]
    assert error == ("error: what method 'unstable' computed from a finite network became NaN or "
                     "infinite by step 0 (epoch 1); no checkpoint yet; check the method's options "
                     "(method.temperature=1e-30)")


def test_the_stem_hint_never_suggests_the_stem_already_in_use(natkit_host, tmp_path):
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "r"),
                                 *tiny_args("backbone.stem=small", "data.image_size=8")])
    error = one_error(result)
    assert "too small for the 'small' stem" in error and "use images of at least 15 px" in error
    assert "stem 'small' or" not in error



# each of these passed the config's checks and then failed with a traceback (an allocation
# of terabytes, a float32 overflow, 100,000 worker processes), some of them after training
EDGE_VALUES = ["eval.mlp_hidden=100000000000", "eval.transfer_hidden=100000000000",
               "train.num_workers=100000", "targets.dim=1000000000",
               "backbone.widths=[4,8,8,8,1000000000]", "head.hidden=[100000000000]",
               "data.image_size=1000000", "data.num_train=1000000000000",
               "train.weight_decay=1e300", "train.lr=1e300", "eval.mlp_weight_decay=[1e300]"]


@pytest.mark.parametrize("edge", EDGE_VALUES)
def test_values_at_the_edges_of_their_types_are_refused_before_training(natkit_host, tmp_path,
                                                                        edge):
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "r"),
                                 *tiny_args("train.epochs=1", edge)])
    error = one_error(result)
    assert error.startswith(f"error: {edge.split('=')[0]}: ") and "<=" in error
    assert not (tmp_path / "r").exists()


def test_natkit_eval_of_a_snapshot_that_does_not_fit_is_one_line_naming_the_key(natkit_host,
                                                                               tmp_path):
    run_dir = trained(tmp_path, "train.keep_every=1")
    path = run_dir / "snapshots" / "epoch-0001.pt"
    state = load_checkpoint(path)
    name = next(k for k in state["model"] if k.endswith("weight") and state["model"][k].dim() > 1)
    state["model"][name] = torch.zeros(2, 2)
    save_checkpoint(state, path)
    error = one_error(runner.invoke(app, ["eval", str(run_dir), "--checkpoint", "1"]))
    assert error.startswith(f"error: checkpoint '{path}' does not fit the run's config: '{name}' "
                            "has shape (2, 2); this config's network has (")


# ---------------------------------------------------------------- what a review found


def test_a_checkpoint_whose_epoch_totals_are_not_totals_is_one_line(tiny_config, tmp_path):
    from natkit.testing import StopAfter

    natkit.get_host().register(StopAfter(3), name="stop")
    try:
        lifecycle.execute(lifecycle.start(tiny_config(), tmp_path / "run"), evaluate=False)
    finally:
        natkit.get_host().unregister("stop")
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    state["epoch_sums"] = {"bogus": 1}
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="its epoch_sums are not an epoch's totals"):
        lifecycle.resume(tmp_path / "run")
    assert not RunLock(tmp_path / "run").held


def test_a_checkpoint_that_nests_itself_is_refused_in_one_line(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run")
    assert lifecycle.execute(run, evaluate=False).finished
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    loop: list = []
    loop.append(loop)
    state["optimizer"]["state"] = {0: {"momentum_buffer": loop}}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="nests its state too deeply"):
        lifecycle.resume(tmp_path / "run")


def test_a_crafted_index_cache_never_costs_a_traceback(tmp_path, monkeypatch):
    from natkit.datasets.index import IndexCacheWarning, folder_index, index_path

    monkeypatch.setenv("NATKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path / "data").resolve()
    _tamper(root, lambda data: data["dirs"].__setitem__("c0/\x00x", 1))
    with pytest.warns(IndexCacheWarning):
        assert not folder_index(root).cached
    index_path(root).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.warns(IndexCacheWarning, match="unreadable"):
        assert not folder_index(root).cached


def test_a_file_name_with_a_backslash_keeps_its_cache(tmp_path, monkeypatch):
    from natkit.datasets.index import folder_index

    monkeypatch.setenv("NATKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path / "data").resolve()
    Image.new("RGB", (20, 14)).save(root / "c0" / "a\\b.png")
    assert not folder_index(root).cached
    assert folder_index(root).cached  # no warning, no rescan


class TakesRun:
    @natkit.hookimpl
    def register_commands(self, cli):
        @cli.command("run")
        def hijack() -> None:
            """Not natkit's run."""


def test_a_plugin_cannot_replace_a_natkit_command(natkit_host):
    import typer

    cli = typer.Typer()

    @cli.command()
    def run() -> None:
        """natkit's own run."""
        print("natkit's run")

    natkit_host.register(TakesRun(), name="takes-run")
    with pytest.warns(natkit.plugins.PluginWarning, match=r"'takes-run' failed in its "
                                                          r"register_commands hook: .*command "
                                                          r"'run' is taken"):
        natkit_host.add_commands(cli)
    assert [info.callback.__name__ for info in cli.registered_commands] == ["run"]


def test_ctrl_c_during_a_snapshot_evaluation_is_one_line(natkit_host, tmp_path, monkeypatch):
    from natkit.evaluation import snapshots

    run_dir = trained(tmp_path, "train.keep_every=1")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshots, "evaluate", interrupted)
    result = runner.invoke(app, ["eval", str(run_dir), "--checkpoint", "1"])
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"interrupted: evaluation stopped; the run's checkpoints are intact; evaluate again "
        f"with: natkit eval {run_dir} --checkpoint 1")
