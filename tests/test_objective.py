"""natkit.NATObjective, NAT in a loop of one's own: the engine's NAT, bit for bit."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

import natkit
from natkit import builders, engine
from natkit.checkpoint import read_metrics
from natkit.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    NatkitError,
    SolverError,
    UnknownComponentError,
)
from natkit.methods import Batch
from natkit.objective import NATObjective

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "examples" / "own_loop.py"

# The tiny run with nothing the docs' loop does differently: no augmentation (a crop of the
# whole 16 px image, never flipped), no dropout, plain SGD with momentum at a constant rate.
AS_THE_DOCS_LOOP = ["augment.crop_size=16", "augment.flip=false", "head.dropout=0",
                    "train.weight_decay=0", "train.warmup_steps=0", "train.lr_gamma=0",
                    "train.lr=0.05", "train.momentum=0.9", "train.log_every=1",
                    "eval.enabled=false"]


@pytest.fixture(scope="module")
def own_loop():
    """docs/examples/own_loop.py, the script docs/own-loop.md shows, as a module."""
    spec = importlib.util.spec_from_file_location("own_loop", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recording(torch.utils.data.Dataset):
    """A dataset that notes the order its items are read in."""

    def __init__(self, dataset):
        self.dataset, self.read = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.read.append(index)
        return self.dataset[index]


def test_the_docs_loop_trains_exactly_what_the_engine_trains(own_loop, tiny_config, tmp_path,
                                                              monkeypatch):
    run = engine.Run(tiny_config(*AS_THE_DOCS_LOOP), tmp_path / "run",
                     console=Console(quiet=True))
    model = copy.deepcopy(run.model)  # the run's initial network, from its seed
    model.normalize = False  # the objective normalises the head's outputs, as the network does
    data = Recording(run.dataset)
    losses = own_loop.main(data, model, dim=8, epochs=2, batch_size=16, lr=0.05, seed=0)
    # the engine takes the batches the loop's DataLoader drew (its own order has its own seed)
    order = torch.tensor(data.read).view(2, -1, 16)
    monkeypatch.setattr(engine.Run, "epoch_batches", lambda self, epoch: order[epoch])
    assert run.train()

    steps = [r for r in read_metrics(run.dir / "metrics.jsonl") if r["kind"] == "step"]
    assert len(steps) == len(losses) == 8
    assert [r["loss"] for r in steps] == losses  # bit for bit, a reassigning epoch and a plain one
    trained = model.state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in run.model.state_dict().items())


def test_the_docs_loop_runs_as_written_on_a_wrapped_dataset(own_loop):
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g), i % 3)
             for i in range(32)]
    losses = own_loop.main(natkit.wrap_dataset(pairs), epochs=1, batch_size=16)
    assert len(losses) == 2 and all(0.0 < loss < 4.0 for loss in losses)  # unit vectors: in [0, 4]


def _nat_method(config):
    dataset = builders.load_training_set(config)
    return builders.build_method(config, dataset, torch.device("cpu"))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_objective_computes_what_the_nat_method_computes(tiny_config, reduction):
    method = _nat_method(tiny_config(f"method.loss_reduction={reduction}"))
    objective = NATObjective(64, 8, seed=0, reduction=reduction)  # the tiny run: seed 0, 64 images
    every = torch.arange(64)
    assert torch.equal(objective.assignment.perm, method.assignment.perm)
    assert torch.equal(objective.assignment.targets_of(every), method.assignment.targets_of(every))
    g = torch.Generator().manual_seed(1)
    for step, reassign in enumerate([True, True, False, True, True]):
        indices = torch.randperm(64, generator=g)[:16]
        features = torch.randn(16, 8, generator=g)
        method.force_reassignment(reassign)
        objective.reassign = reassign
        ours, theirs = features.clone().requires_grad_(), features.clone().requires_grad_()
        expected = method.loss(F.normalize(theirs, dim=1).float(),
                               Batch(indices=indices, labels=torch.zeros(16, dtype=torch.int64),
                                     epoch=0, step=step))
        loss = objective(ours, indices)
        assert torch.equal(loss, expected.loss)
        assert objective.last_stats == expected.reassigned
        assert (objective.last_stats is not None) == reassign
        assert torch.equal(objective.assignment.perm, method.assignment.perm)
        loss.backward()
        expected.loss.backward()
        assert torch.equal(ours.grad, theirs.grad)
    assert [objective.start_epoch(e) for e in range(7)] == [method.reassigns_in(e) for e in range(7)]
    assert not any(NATObjective(64, 8, permute_every=0).start_epoch(e) for e in range(4))


def _steps(objective, batches):
    losses = []
    for indices, features in batches:
        losses.append(objective(features, indices))
    return losses


def test_a_state_dict_round_trip_resumes_identically():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randperm(40, generator=g)[:10], torch.randn(10, 6, generator=g))
               for _ in range(4)]
    first = NATObjective(40, 6, seed=3)
    _steps(first, batches[:2])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = NATObjective(40, 6, seed=3)
    assert not torch.equal(second.assignment.perm, first.assignment.perm)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(second.assignment.perm, first.assignment.perm)
    after = _steps(first, batches[2:]), _steps(second, batches[2:])
    assert all(torch.equal(a, b) for a, b in zip(*after, strict=True))
    assert torch.equal(second.assignment.perm, first.assignment.perm)
    # a NAT method's checkpoint state fits too: it is the same {"assignment": ...}
    third = NATObjective(40, 6, seed=3)
    third.set_extra_state({"assignment": first.assignment.state_dict()})
    assert torch.equal(third.assignment.perm, first.assignment.perm)


@pytest.mark.parametrize("other, message", [
    ({"num_samples": 30}, r"^state_dict: checkpoint permutation has 40 entries"),
    ({"dim": 4}, r"^state_dict: checkpoint targets .* differ"),
    ({"seed": 4}, r"^state_dict: checkpoint targets .* differ"),
])
def test_a_state_dict_that_does_not_fit_is_refused_in_one_line(other, message):
    state = NATObjective(40, 6, seed=3).state_dict()
    options = {"num_samples": 40, "dim": 6, "seed": 3, **other}
    with pytest.raises(CheckpointError, match=message) as caught:
        NATObjective(options.pop("num_samples"), **options).load_state_dict(state)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("features, indices, message", [
    (torch.randn(4, 5), [0, 1, 2, 3], r"^features: expected shape \[batch, 8\] \(dim=8\), got \[4, 5\]"),
    (torch.randn(8), [0, 1, 2, 3], r"^features: expected shape \[batch, 8\]"),
    ([[0.0] * 8] * 4, [0, 1, 2, 3], r"^features: expected a tensor"),
    (torch.zeros(4, 8, dtype=torch.int64), [0, 1, 2, 3], r"^features: expected floating point"),
    (torch.randn(4, 8), [0, 1, 2, 64], r"^indices: 64 is out of range for num_samples=64 \(0..63\)"),
    (torch.randn(4, 8), [-1, 1, 2, 3], r"^indices: -1 is out of range"),
    (torch.randn(4, 8), [0, 1, 2], r"^indices: expected one index per row of features, shape \[4\], "
                                    r"got \[3\]"),
    (torch.randn(4, 8), [[0, 1], [2, 3]], r"^indices: expected one index per row"),
    (torch.randn(4, 8), [0.0, 1.0, 2.0, 3.0], r"^indices: expected integers"),
    (torch.randn(4, 8), [0, 1, 1, 3], r"^indices: 1 appears more than once in the batch"),
])
def test_bad_features_or_indices_get_one_line_naming_the_argument(features, indices, message):
    objective = NATObjective(64, 8)
    before = objective.assignment.perm.clone()
    with pytest.raises(InputError, match=message) as caught:
        objective(features, torch.tensor(indices))
    assert isinstance(caught.value, NatkitError) and "\n" not in str(caught.value)
    assert torch.equal(objective.assignment.perm, before)


@pytest.mark.parametrize("arguments, error, message", [
    ({"num_samples": 0}, ConfigError, r"^num_samples: expected an integer >= 1, got 0"),
    ({"permute_every": -1}, ConfigError, r"^permute_every: expected an integer >= 0"),
    ({"reduction": "max"}, ConfigError, r"^reduction: expected 'mean' or 'sum'"),
    ({"targets": "spere"}, UnknownComponentError, r"unknown targets 'spere'.*did you mean 'sphere'"),
    ({"solver": "hungarain"}, UnknownComponentError, r"unknown solver 'hungarain'"),
    ({"solver": 3}, ConfigError, r"^solver: expected a solver's name or a callable"),
    ({"targets": object()}, ConfigError, r"^targets: expected a target distribution's name"),
    ({"targets": natkit.create_targets("basis", dim=4)}, ConfigError,
     r"^dim: 8, but the targets given have dim=4"),
    ({"dim": "8"}, ConfigError, r"^dim: expected an integer >= 1 or None, got '8'"),
    ({"seed": "x"}, ConfigError, r"^seed: expected an integer, got 'x'"),
    ({"seed": None}, ConfigError, r"^seed: expected an integer, got None"),
    ({"device": "bogus"}, ConfigError, r"^device: 'bogus' is not a device"),
    *([({"device": "cuda"}, ConfigError, r"^device: 'cuda' requested but CUDA is not available")]
      if not torch.cuda.is_available() else []),
])
def test_bad_settings_get_one_line_naming_the_argument(arguments, error, message):
    options = {"num_samples": 64, "dim": 8, **arguments}
    with pytest.raises(error, match=message) as caught:
        NATObjective(options.pop("num_samples"), **options)
    assert "\n" not in str(caught.value)


def test_autocast_does_not_change_the_assignment_or_the_loss():
    features, indices = torch.randn(64, 32), torch.arange(64)
    plain, mixed = NATObjective(64, 32, seed=3), NATObjective(64, 32, seed=3)
    loss = plain(features, indices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_loss = mixed(features, indices)
    assert mixed_loss.dtype == torch.float32 and torch.equal(mixed_loss, loss)
    assert torch.equal(mixed.assignment.state_dict()["perm"], plain.assignment.state_dict()["perm"])
    assert mixed.last_stats == plain.last_stats


def test_a_validation_pass_in_eval_mode_leaves_the_assignment_alone():
    objective = NATObjective(32, 8, seed=0)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v
              for k, v in objective.assignment.state_dict().items()}
    objective.eval()
    with torch.no_grad():
        objective(torch.randn(32, 8), torch.arange(32))
    assert objective.last_stats is None
    after = objective.assignment.state_dict()
    assert all(torch.equal(before[k], after[k]) if isinstance(before[k], torch.Tensor)
               else before[k] == after[k] for k in before)
    objective.train()
    objective(torch.randn(32, 8), torch.arange(32))
    assert objective.last_stats is not None


def test_built_components_are_taken_as_they_are_and_a_bad_solver_is_named():
    targets = natkit.create_targets("basis", dim=8, k=4)
    objective = NATObjective(16, targets=targets, solver=natkit.create_solver("greedy"))
    assert objective.dim == 8 and objective.targets is targets
    objective(torch.randn(8, 8), torch.arange(8))
    assert objective.last_stats is not None

    def stuck(cost):
        return torch.zeros(len(cost), dtype=torch.int64)

    with pytest.raises(SolverError, match=r"^solver 'stuck' returned .*a solver must return a "
                                          r"permutation of 0..7"):
        NATObjective(16, 8, solver=stuck)(torch.randn(8, 8), torch.arange(8))


# Two ranks each give their half of every global batch; the single process the whole batch.
WORKER = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    import natkit

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    objective = natkit.NATObjective(48, 8, seed=5)
    g = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(3):
        indices, features = torch.randperm(48, generator=g)[:16], torch.randn(16, 8, generator=g)
        mine = slice(8 * rank, 8 * (rank + 1))
        loss = objective(features[mine], indices[mine])
        steps.append({"loss": loss.item(), "stats": objective.last_stats})
    try:  # both ranks give the same samples: the global batch holds each twice
        objective(features[:8], indices[:8])
        error = None
    except natkit.NatkitError as exc:
        error = str(exc)
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
        json.dump({"steps": steps, "perm": objective.assignment.perm.tolist(), "error": error}, f)
    dist.destroy_process_group()
''')


def test_two_ranks_assign_the_global_batch_as_one_process_does(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(worker), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    single = NATObjective(48, 8, seed=5)
    g = torch.Generator().manual_seed(7)
    for step in range(3):
        indices, features = torch.randperm(48, generator=g)[:16], torch.randn(16, 8, generator=g)
        loss = single(features, indices)
        assert all(r["steps"][step]["stats"] == single.last_stats for r in ranks)
        # each rank's mean over its half; DDP's average of the two is the global batch's mean
        halves = torch.tensor([r["steps"][step]["loss"] for r in ranks])
        torch.testing.assert_close(halves.mean(), loss)
    assert ranks[0]["perm"] == ranks[1]["perm"] == single.assignment.perm.tolist()
    assert all(r["error"].startswith("indices: ") and "more than once in the global batch"
               in r["error"] for r in ranks)
