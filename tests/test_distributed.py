"""Distributed training for real: torchrun with 2 gloo processes on the CPU."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from natkit.checkpoint import load_checkpoint, read_metrics
from natkit.rundir import RunLock
from natkit.testing import TINY, assert_same_state

# BatchNorm statistics are per rank on the CPU (PyTorch's SyncBatchNorm needs CUDA), so the
# comparison with one process uses a backbone without BatchNorm: a one-block ViT. Everything
# else is then the same computation, split over two ranks.
NO_BATCHNORM = [
    "backbone.name=timm:vit_tiny_patch16_224", "backbone.patch_size=4", "backbone.depth=1",
    "backbone.embed_dim=16", "backbone.num_heads=2", "preprocess.name=clean",
    "method.permute_every=1", "train.log_every=1", "eval.enabled=false", "deterministic=true",
]
SMALL = [t for t in TINY if not t.startswith("backbone.")]

# The worker: natkit's CLI, plus a test plugin chosen by NATKIT_TEST_PLUGIN.
WORKER = textwrap.dedent('''
    import os, sys
    import torch
    import natkit
    import natkit.methods
    from natkit.cli import main
    from natkit.plugins import get_host

    class Corrupt:  # changes rank 0's P after the first epoch's checkpoint
        @natkit.hookimpl
        def on_epoch_end(self, run, metrics):
            if metrics["epoch"] == 0:
                perm = run.method.assignment.perm
                perm[[0, 1]] = perm[[1, 0]]

    if os.environ.get("PIDS"):  # where the test finds the rank to kill
        with open(os.path.join(os.environ["PIDS"], os.environ["RANK"]), "w") as f:
            f.write(str(os.getpid()))
    class Stop:  # asks rank 0 to stop after step 6, as Ctrl-C would; the ranks agree
        @natkit.hookimpl
        def on_step_end(self, run, metrics):
            if run.step == 6:
                run.request_stop()

    class Scaled(natkit.methods.Method):  # NAT-free: a learned scale, outside the network
        def __init__(self, *, context):
            self.head_dim = 8
            self.scale = torch.nn.Linear(1, 1, bias=False)

        def modules(self):
            return self.scale

        def loss(self, outputs, batch):
            target = (batch.indices % 8).to(outputs.device)
            logits = outputs * self.scale.weight.squeeze()
            return natkit.methods.StepLoss(torch.nn.functional.cross_entropy(logits, target))

    class Relabel(natkit.methods.Method):  # SeLa's shape: labels from every image's outputs
        def __init__(self, *, context):
            self.head_dim = 8
            self.labels = torch.arange(context.num_images) % 8
            self.done = -1

        def start_epoch(self, epoch, run):
            if epoch != self.done:
                self.labels, self.done = run.outputs().argmax(1).cpu(), epoch

        def loss(self, outputs, batch):
            target = self.labels[batch.indices].to(outputs.device)
            return natkit.methods.StepLoss(torch.nn.functional.cross_entropy(outputs, target))

        def state_dict(self):
            return {"labels": self.labels, "done": self.done}

        def load_state_dict(self, state):
            self.labels, self.done = state["labels"], state["done"]

    class Stall(Scaled):  # rank 1 stalls in its third step: rank 0 waits in backward
        def loss(self, outputs, batch):
            if os.environ["RANK"] == "1" and batch.step == 2:
                import time
                time.sleep(float(os.environ.get("STALL_S", "30")))
            return super().loss(outputs, batch)

    class ScaledPlugin:
        @natkit.hookimpl
        def register_methods(self, register):
            register("scaled", Scaled)
            register("relabel", Relabel)
            register("stall", Stall)

    class HookOutputs:  # a hook may not gather: it runs on rank 0 only
        @natkit.hookimpl
        def on_epoch_end(self, run, metrics):
            run.outputs()

    get_host().register(ScaledPlugin(), name="scaled")
    plugin = os.environ.get("NATKIT_TEST_PLUGIN")
    if plugin == "corrupt":
        get_host().register(Corrupt(), name="corrupt")
    if plugin == "stop":
        get_host().register(Stop(), name="stop")
    if plugin == "hook-outputs":
        get_host().register(HookOutputs(), name="hook-outputs")
    sys.argv = ["natkit", *sys.argv[1:]]
    main()
''')


def sets(texts: list[str]) -> list[str]:
    return [arg for text in texts for arg in ("--set", text)]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE",
                                                                     "LOCAL_RANK", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200",
                "NATKIT_DIST_TIMEOUT": "60", **extra})
    return env


def torchrun(tmp_path: Path, *args: str, ranks: int = 2, wait: bool = True,
             **env: str) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """``torchrun --standalone --nproc_per_node=RANKS worker.py ARGS`` (the worker is natkit's CLI)."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", str(worker), *args]
    if not wait:
        return subprocess.Popen(command, env=environment(**env), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    return subprocess.run(command, env=environment(**env), capture_output=True, text=True,
                          timeout=300)


def natkit(*args: str) -> subprocess.CompletedProcess[str]:
    """One plain natkit process."""
    return subprocess.run([sys.executable, "-m", "natkit", *args], env=environment(),
                          capture_output=True, text=True, timeout=300)


def step_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]


@pytest.mark.parametrize("reduction", ["mean", "sum"])  # sum: the authors' loss (paper preset)
def test_two_ranks_train_what_one_process_trains(tmp_path, reduction):
    """Same global batch: the same losses (to float rounding) and the same assignment P."""
    config = sets([*SMALL, *NO_BATCHNORM, "train.epochs=1", f"method.loss_reduction={reduction}",
                   *(["train.lr=0.003"] if reduction == "sum" else [])])
    two = torchrun(tmp_path, "run", "--out", str(tmp_path / "two"), *config)
    assert two.returncode == 0, two.stderr[-3000:]
    one = natkit("run", "--out", str(tmp_path / "one"), *config)
    assert one.returncode == 0, one.stderr[-3000:]
    # The ranks compute each image's features as one process does, and DDP's average of two
    # half-batch gradients equals the full batch's up to the order of float additions: the
    # losses of four steps agree to 1e-5 (relative), far below the changes between steps.
    losses_two, losses_one = step_losses(tmp_path / "two"), step_losses(tmp_path / "one")
    assert len(losses_two) == len(losses_one) == 4
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    assert max(abs(a - b) for a, b in itertools.pairwise(losses_one)) > 1e-3
    p_two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["method"]["assignment"]["perm"]
    p_one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["method"]["assignment"]["perm"]
    assert torch.equal(p_two, p_one)  # every batch of the epoch was reassigned the same way
    assert torch.equal(torch.sort(p_two).values, torch.arange(64))
    saved = yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())
    assert saved["world_size"] == 2
    assert {r["world_size"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl")} == {2}
    files = sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith("."))
    # written by rank 0, once
    assert files == ["checkpoint.pt", "config.yaml", "environment.json", "metrics.jsonl"]


def test_bn_batch_trains_on_one_process_what_two_ranks_train(tmp_path):
    """train.bn_batch: one process normalises each half of the batch alone, as two ranks with
    per-rank BatchNorm do (and the authors' two GPUs under DataParallelTable): the same losses,
    the same P, and the same running statistics, those of the first half (DDP broadcasts rank
    0's buffers before every forward; DataParallelTable saved GPU 1's replica)."""
    config = sets([*TINY, "train.bn_batch=8", "train.sync_bn=false", "train.epochs=1",
                   "method.permute_every=1", "train.log_every=1", "eval.enabled=false",
                   "deterministic=true"])
    two = torchrun(tmp_path, "run", "--out", str(tmp_path / "two"), *config)
    assert two.returncode == 0, two.stderr[-3000:]
    one = natkit("run", "--out", str(tmp_path / "one"), *config)
    assert one.returncode == 0, one.stderr[-3000:]
    losses_two, losses_one = step_losses(tmp_path / "two"), step_losses(tmp_path / "one")
    assert len(losses_one) == 4 and losses_two == pytest.approx(losses_one, rel=1e-5)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("two", "one"))
    assert torch.equal(a["method"]["assignment"]["perm"], b["method"]["assignment"]["perm"])
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():  # BatchNorm's running statistics included
        torch.testing.assert_close(value, b["model"][key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_checkpoint_moves_between_two_ranks_and_one_process(tmp_path):
    config = sets([*SMALL, "eval.enabled=false", "train.epochs=1"])
    first = torchrun(tmp_path, "run", "--out", str(tmp_path / "a"), *config)
    assert first.returncode == 0, first.stderr[-3000:]
    again = natkit("run", "--resume", str(tmp_path / "a"), "--epochs", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (2, 8)
    assert [r["world_size"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")
            if r["kind"] == "epoch"] == [2, 1]

    single = natkit("run", "--out", str(tmp_path / "b"), *config)
    assert single.returncode == 0, single.stderr[-3000:]
    resumed = torchrun(tmp_path, "run", "--resume", str(tmp_path / "b"), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 2
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["world_size"] == 2


@pytest.mark.parametrize("method", ["nat", "relabel"])  # relabel: outputs() of every image
def test_two_ranks_stopped_mid_epoch_resume_bit_exactly(tmp_path, method):
    # the relabelling reads BatchNorm statistics, which are per rank on the CPU: rank 0's are
    # shared first, or the ranks' labels (and a resumed run's) would differ
    config = ["--method", method,
              *sets([*SMALL, "eval.enabled=false", "train.epochs=2", "deterministic=true"])]
    full = torchrun(tmp_path, "run", "--out", str(tmp_path / "full"), *config)
    assert full.returncode == 0, full.stderr[-3000:]
    part = torchrun(tmp_path, "run", "--out", str(tmp_path / "part"), *config,
                    NATKIT_TEST_PLUGIN="stop")
    assert "interrupted: checkpoint saved at step 6" in part.stderr, part.stderr[-3000:]
    state = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)
    resumed = torchrun(tmp_path, "run", "--resume", str(tmp_path / "part"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(load_checkpoint(tmp_path / "part" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "full" / "checkpoint.pt"))


def test_a_methods_own_modules_stay_identical_on_every_rank(tmp_path):
    # their gradients are averaged like the network's; a difference would fail the checksum
    result = torchrun(tmp_path, "run", "--out", str(tmp_path / "run"), "--method", "scaled",
                      *sets([*SMALL, "eval.enabled=false", "train.epochs=2"]))
    assert result.returncode == 0, result.stderr[-3000:]
    weight = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["method_modules"]["weight"]
    assert weight.shape == (1, 1) and float(weight) != 0.0


def test_a_hook_that_gathers_under_torchrun_gets_one_line_not_a_hang(tmp_path):
    result = torchrun(tmp_path, "run", "--out", str(tmp_path / "run"),
                      *sets([*SMALL, "eval.enabled=false", "train.epochs=1"]),
                      NATKIT_TEST_PLUGIN="hook-outputs")
    assert result.returncode != 0
    assert "outputs() gathers over the ranks under torchrun" in result.stderr


def test_evaluation_under_torchrun_equals_natkit_eval(tmp_path):
    run = torchrun(tmp_path, "run", "--out", str(tmp_path / "run"),
                   *sets([*SMALL, "train.epochs=1", "eval.plots=false"]))
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(written) == {"linear", "mlp", "knn"}
    again = natkit("eval", str(tmp_path / "run"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == written


def test_ranks_that_disagree_on_p_stop_at_the_next_checkpoint(tmp_path):
    result = torchrun(tmp_path, "run", "--out", str(tmp_path / "run"),
                      *sets([*SMALL, "eval.enabled=false", "train.epochs=2"]),
                      NATKIT_TEST_PLUGIN="corrupt")
    assert result.returncode != 0
    assert "rank 1 differs from rank 0" in result.stderr
    assert "assignment P" in result.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1  # the good one


def test_a_killed_rank_stops_the_run_within_a_bounded_time(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    run_dir = tmp_path / "run"
    process = torchrun(tmp_path, "run", "--out", str(run_dir),
                       *sets([*SMALL, "eval.enabled=false", "train.epochs=500"]),
                       wait=False, PIDS=str(pids))
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():  # training is under way
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
        os.kill(int((pids / "1").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=90)
        assert time.monotonic() - killed < 60
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "rank      : 1" in stderr and "Signal 9" in stderr  # torchrun names the dead rank
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] >= 1  # the last good one stays


def test_sigterm_saves_one_checkpoint_that_resumes(tmp_path):
    run_dir = tmp_path / "run"
    process = torchrun(tmp_path, "run", "--out", str(run_dir),
                       *sets([*SMALL, "eval.enabled=false", "train.epochs=500"]), wait=False)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)  # torchrun forwards it to every rank
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "interrupted: checkpoint saved at step" in stderr
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == state["epoch"] * 4 + state["batch_in_epoch"]
    resumed = natkit("run", "--resume", str(run_dir), "--epochs", str(state["epoch"] + 1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == state["epoch"] + 1


# ---------------------------------------------------------------- in-process checks, no launcher


def test_one_process_collectives_are_the_identity():
    from natkit.distributed import SINGLE

    x = torch.arange(6.0).reshape(3, 2)
    assert SINGLE.all_gather(x, "test") is x and SINGLE.broadcast(x, "test") is x
    assert SINGLE.any(True, "test") and not SINGLE.any(False, "test")
    assert SINGLE.mean(torch.tensor(2.5), "test") == 2.5
    SINGLE.check_same("anything", "test")  # nothing to compare with


def test_the_fingerprint_changes_with_any_value_of_the_state():
    from natkit.distributed import state_fingerprint

    state = {"perm": torch.arange(5), "epoch": 3, "nested": [torch.zeros(2), 1.5]}
    same = {"nested": [torch.zeros(2), 1.5], "epoch": 3, "perm": torch.arange(5)}
    assert state_fingerprint(state) == state_fingerprint(same)  # key order does not matter
    swapped = {**state, "perm": torch.tensor([1, 0, 2, 3, 4])}
    assert state_fingerprint(swapped) != state_fingerprint(state)
    assert state_fingerprint({**state, "epoch": 4}) != state_fingerprint(state)
    assert state_fingerprint({**state, "perm": torch.arange(5.0)}) != state_fingerprint(state)


@pytest.mark.parametrize("overrides, message", [
    (("world_size=1",), "world_size: the config says 1 but this run has 2 process(es)"),
    (("world_size=2", "train.batch_size=15"), "train.batch_size: 15 is the global batch, split "
                                              "over 2 ranks; it must be a multiple of 2"),
    (("world_size=2", "train.sync_bn=true"), "train.sync_bn: PyTorch's SyncBatchNorm needs CUDA"),
])
def test_a_run_that_cannot_be_split_over_the_ranks_is_refused(tiny_config, tmp_path, overrides,
                                                              message):
    from natkit import engine
    from natkit.distributed import Comm
    from natkit.errors import ConfigError

    # refused while the run is built, before any collective: no process group is needed
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.Run(tiny_config(*overrides), tmp_path, comm=Comm(rank=0, world_size=2))


def _natkit_frames(stderr: str) -> list[str]:
    """Traceback lines that point into natkit (torchrun's launcher prints its own)."""
    return [line for line in stderr.splitlines() if "/natkit/" in line and "File " in line]


def test_a_rank_stalled_inside_backward_costs_one_line_not_a_traceback(tmp_path):
    result = torchrun(tmp_path, "run", "--out", str(tmp_path / "run"),
                      *sets([*SMALL, "method=stall", "eval.enabled=false", "train.epochs=1"]),
                      NATKIT_DIST_TIMEOUT="5", STALL_S="20")
    assert result.returncode != 0
    assert ("error: rank 0: averaging the gradients (DDP's all-reduce in backward) failed: "
            "another rank stopped, died or timed out") in result.stderr, result.stderr[-3000:]
    assert _natkit_frames(result.stderr) == []


def test_every_rank_says_one_line_when_the_run_directory_is_locked(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(run_dir)
    lock.acquire()  # another natkit process trains there
    try:
        result = torchrun(tmp_path, "run", "--out", str(run_dir),
                          *sets([*SMALL, "eval.enabled=false", "train.epochs=1"]))
    finally:
        lock.release()
    assert result.returncode != 0
    assert f"error: run directory '{run_dir}' is in use by natkit process" in result.stderr
    assert "error: rank 1: writing config.yaml failed" in result.stderr
    assert _natkit_frames(result.stderr) == []
