"""Why NAT's features lose to random init on the kNN probe at the tiny scale.

On the tiny default (benchmarks/tables.py SCALES['tiny']) NAT beats its random init on the
linear probe but not on the kNN probe. This script re-probes the trained checkpoints of the
default recipe, found under ``--runs`` by their config (any seed; no retraining), with the
kNN probe changed one thing at a time: the normalisation of the features, the temperature,
the k grid, the layer and its pooling, the head's output instead of the backbone's, and the
trained network's BatchNorm statistics recomputed like the baseline's. Each variant probes
the trained network and the same network at initialisation (rebuilt from the run's seed,
BatchNorm recomputed on the training images, as natkit.evaluation.protocol does) with the
same protocol: k (and whatever else varies) chosen on a validation split of the training
split, the test split used once. Runs of the embedded default (``natkit run`` with no
options) found there are reported in a table of their own.

    python -m benchmarks.knn_gap [--runs benchmarks/runs/tiny --runs DIR ...]

writes benchmarks/results/tiny/knn_gap.md and knn_gap.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.stats import paired
from benchmarks.tables import SCALES
from benchmarks.timing import stopwatch
from natkit import config as cfg
from natkit.builders import build_method, initial_network, load_dataset, read_run_config
from natkit.checkpoint import CHECKPOINT, load_checkpoint
from natkit.datasets import stratified_split
from natkit.errors import NatkitError
from natkit.evaluation.features import extract_features, recalibrate_batchnorm
from natkit.evaluation.probes import knn_probe

# the recipes whose runs are re-probed: overrides applied to the defaults (then the run's seed)
RECIPES: dict[str, tuple[str, ...]] = {
    "tiny default (2,000 images, 12 epochs; the benchmark tables' base recipe)": SCALES["tiny"],
    "embedded default (`natkit run`: 3,000 images, 40 epochs)": (),
}
CPU = torch.device("cpu")


def _training_part(config: cfg.Config) -> dict[str, Any]:
    """Everything of a config but its evaluation section: what makes two runs the same run."""
    return {k: v for k, v in config.to_dict().items() if k != "eval"}


def find_runs(roots: list[Path]) -> dict[str, dict[int, Path]]:
    """Finished runs of each recipe in ``RECIPES`` under ``roots``: recipe -> seed -> run dir.

    A run belongs to a recipe when its config, evaluation aside, is the recipe's at its
    seed. Of several runs of one seed (the same config hashed before and after a new
    option) the first by name is taken.
    """
    found: dict[str, dict[int, Path]] = {name: {} for name in RECIPES}
    for root in roots:
        for run in sorted(p for p in root.glob("*")
                         if (p / CHECKPOINT).exists() and (p / "results.json").exists()):
            try:
                config = read_run_config(run)
            except NatkitError:  # a run of a layout this natkit cannot read: not ours
                continue
            for name, overrides in RECIPES.items():
                ref = cfg.build(overrides=[*overrides, f"seed={config.seed}"])
                if not cfg.difference(_training_part(ref), _training_part(config)):
                    found[name].setdefault(config.seed, run)
    return {name: runs for name, runs in found.items() if runs}


@dataclass(frozen=True)
class Variant:
    """One row: which features, and how the kNN probe treats them."""

    label: str
    features: str  # a key of the features dict built per seed
    normalizations: tuple[str, ...] = ("standardize",)  # natkit's knn_probe, or 'centre'/'whiten'
    temperature: float = 0.07
    ks: tuple[int, ...] | None = None  # None: the run's eval.knn_k


VARIANTS = (
    Variant("as benchmarked: pooled conv5 ('last'), standardised, cosine, T = 0.07", "last"),
    Variant("no standardisation: cosine of the raw features (l2)", "last", ("l2",)),
    Variant("standardize or l2, chosen on validation", "last", ("standardize", "l2")),
    Variant("centred only (training mean), cosine", "last", ("centre",)),
    Variant("PCA-whitened (training covariance, eigenvalues floored at 1e-3 of the largest)",
            "last", ("whiten",)),
    Variant("temperature 0.02", "last", temperature=0.02),
    Variant("temperature 1.0", "last", temperature=1.0),
    Variant("temperature 1000 (plain majority vote)", "last", temperature=1000.0),
    Variant("k from 5, 10, 20, 50 (no 1-NN)", "last", ks=(5, 10, 20, 50)),
    Variant("conv3, 2x2 average-pooled", "conv3/2"),
    Variant("conv4, 2x2 average-pooled", "conv4/2"),
    Variant("conv5, 2x2 average-pooled", "conv5/2"),
    Variant("conv5, 1x1 (global average)", "conv5/1"),
    Variant("conv5, 3x3 average-pooled", "conv5/3"),
    Variant("after the head: the 32-d projection NAT fits to its targets", "head"),
    Variant("after the head, l2 (cosine of the embedding itself)", "head", ("l2",)),
    Variant("trained network's BatchNorm recomputed on unaugmented images, like the baseline's",
            "last/recalibrated"),
)
TAPS = (("last", 2), ("conv3", 2), ("conv4", 2), ("conv5", 2), ("conv5", 1), ("conv5", 3))


@torch.no_grad()
def _head_outputs(net: torch.nn.Module, dataset: Any, batch_size: int) -> torch.Tensor:
    """The head's output before the final L2 normalisation (the cosine ignores it anyway)."""
    net.eval()
    return torch.cat([net.head(net.backbone(net.preprocess(dataset.get_batch(idx))))
                      for idx in torch.arange(len(dataset)).split(batch_size)])


def features_of(run: Path) -> tuple[cfg.Config, dict[str, dict[str, tuple[torch.Tensor, ...]]],
                                    torch.Tensor, torch.Tensor]:
    """Features of both networks of a run: which -> feature key -> (train, test)."""
    config = read_run_config(run)
    e = config.eval
    train_set, test_set = load_dataset(config, "train"), load_dataset(config, "test")
    method = build_method(config, train_set, CPU)
    nets = {"trained": initial_network(config, train_set, method),
            "random_init": initial_network(config, train_set, method)}
    nets["trained"].load_state_dict(load_checkpoint(run / CHECKPOINT)["model"])
    recalibrate_batchnorm(nets["random_init"], train_set, CPU, e.batch_size)
    out: dict[str, dict[str, tuple[torch.Tensor, ...]]] = {}
    for which, net in nets.items():
        net.eval()
        feats = {}
        for layer, pool in TAPS:
            key = "last" if layer == "last" else f"{layer}/{pool}"
            feats[key] = tuple(extract_features(net, ds, layer, CPU, e.batch_size, pool)
                               for ds in (train_set, test_set))
        feats["head"] = tuple(_head_outputs(net, ds, e.batch_size) for ds in (train_set, test_set))
        if which == "trained":
            again = copy.deepcopy(net)
            recalibrate_batchnorm(again, train_set, CPU, e.batch_size)
            feats["last/recalibrated"] = tuple(extract_features(again, ds, "last", CPU,
                                                                e.batch_size)
                                               for ds in (train_set, test_set))
        out[which] = feats
    out["random_init"]["last/recalibrated"] = out["random_init"]["last"]  # recomputed already
    return config, out, train_set.labels, test_set.labels


def _transform(how: str) -> Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """A normalisation fitted on training features, returned as a map to apply to any rows."""

    def centre(fit: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        mean = fit.mean(dim=0, keepdim=True)
        return lambda x: x - mean

    def whiten(fit: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        mean = fit.mean(dim=0, keepdim=True)
        xc = (fit - mean).double()
        values, vectors = torch.linalg.eigh(xc.T @ xc / (len(fit) - 1))
        floor = 1e-3 * float(values.max())
        w = (vectors / (values.clamp_min(0) + floor).sqrt()).float()
        return lambda x: (x - mean) @ w

    return {"centre": centre, "whiten": whiten}[how]


def dense_knn_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                    test_y: torch.Tensor, *, how: str, ks: tuple[int, ...], temperature: float,
                    val_fraction: float, seed: int) -> tuple[float, dict[str, Any]]:
    """natkit's kNN protocol with a normalisation it does not offer (centre, whiten).

    The same validation split, k grid, vote weights and refit as knn_probe; the
    normalisation is fitted on the rows the kNN searches (the fit part, then the whole
    training split).
    """

    def predict(bank: torch.Tensor, bank_y: torch.Tensor, query: torch.Tensor,
                ) -> dict[int, torch.Tensor]:
        apply = _transform(how)(bank)
        sims = F.normalize(apply(query), dim=1) @ F.normalize(apply(bank), dim=1).T
        top, where = sims.topk(min(max(ks), len(bank)), dim=1)
        weights, labels = (top / temperature).exp(), bank_y[where]
        classes = int(bank_y.max()) + 1
        out = {}
        for k in ks:
            votes = torch.zeros(len(query), classes)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            out[k] = votes.argmax(dim=1)
        return out

    fit, val = stratified_split(train_y.numpy(), val_fraction, seed)
    fit_t, val_t = torch.from_numpy(fit), torch.from_numpy(val)
    found = predict(train_x[fit_t], train_y[fit_t], train_x[val_t])
    scores = [float((found[k] == train_y[val_t]).float().mean()) for k in ks]
    best = max(range(len(ks)), key=lambda i: (scores[i], -i))
    final = predict(train_x, train_y, test_x)[ks[best]]
    return float((final == test_y).float().mean()), {"normalize": how, "k": ks[best]}


def probe(variant: Variant, config: cfg.Config, train: tuple[torch.Tensor, torch.Tensor],
          test: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, dict[str, Any]]:
    """Test accuracy of one network under ``variant`` and the setting chosen on validation."""
    e = config.eval
    ks = tuple(variant.ks or e.knn_k)
    if variant.normalizations[0] in ("centre", "whiten"):
        return dense_knn_probe(*train, *test, how=variant.normalizations[0], ks=ks,
                               temperature=variant.temperature, val_fraction=e.val_fraction,
                               seed=config.seed)
    result = knn_probe(*train, *test, ks=ks, temperature=variant.temperature,
                       normalizations=variant.normalizations, val_fraction=e.val_fraction,
                       seed=config.seed)
    return result.accuracy, result.setting


def measure(runs: dict[int, Path], log: Callable[[str], None]) -> dict[str, Any]:
    """Every variant on every seed: label -> {'trained': [...], 'random_init': [...], ...}."""
    rows: dict[str, dict[str, list[Any]]] = {
        v.label: {"trained": [], "random_init": [], "chosen_trained": [], "chosen_random": []}
        for v in VARIANTS}
    linear: dict[str, list[float]] = {"trained": [], "random_init": []}
    seeds = sorted(runs)
    for seed in seeds:
        elapsed = stopwatch()
        config, feats, train_y, test_y = features_of(runs[seed])
        for variant in VARIANTS:
            for which, chosen in (("trained", "chosen_trained"), ("random_init", "chosen_random")):
                tr, te = feats[which][variant.features]
                acc, setting = probe(variant, config, (tr, train_y), (te, test_y))
                rows[variant.label][which].append(acc)
                rows[variant.label][chosen].append(setting)
        results = json.loads((runs[seed] / "results.json").read_text())
        for which in linear:
            linear[which].append(results["linear"][which])
        log(f"seed {seed} ({runs[seed]}): {elapsed():.0f} s")
    return {"seeds": seeds, "runs": {s: str(runs[s]) for s in seeds}, "variants": rows,
            "linear": linear}


def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{mean:.1f} ± {sd:.1f}" if len(values) > 1 else f"{mean:.1f}"


def _chosen(settings: list[dict[str, Any]]) -> str:
    return " / ".join(",".join(f"{v}" if k == "k" else str(v)[:3] for k, v in s.items())
                      for s in settings)


def render(measured: dict[str, dict[str, Any]]) -> str:
    lines = ["# The kNN gap: NAT against random init on the kNN probe", "",
             "Written by `python -m benchmarks.knn_gap` from the trained checkpoints (no "
             "retraining). Each row changes one thing of the kNN probe and applies it to the "
             "trained network and to the same network at random initialisation (BatchNorm "
             "recomputed on the training images); the setting in parentheses and k are chosen "
             "on a validation split of the training split, the test split is read once. "
             "Accuracies in %, mean ± standard deviation over seeds; the difference is trained "
             "minus random init, paired by seed, with a 95% t interval (n - 1 degrees of "
             "freedom); 'chosen' lists, per seed, the setting picked on validation "
             "(normalisation, k) for trained | random init. Exploratory: no multiplicity "
             "correction over the rows.", ""]
    for recipe, m in measured.items():
        seeds = m["seeds"]
        lines += [f"## {recipe}", "",
                  f"Seeds {', '.join(map(str, seeds))}; runs: "
                  + ", ".join(f"`{m['runs'][s]}`" for s in seeds) + ".", "",
                  "| kNN variant | trained | random init | difference [95% CI] | per seed | "
                  "chosen (trained \\| random init) |",
                  "|---|---|---|---|---|---|"]
        lin = m["linear"]
        test = paired(lin["trained"], lin["random_init"])
        lines.append(f"| *for reference: the linear probe as benchmarked* | "
                     f"{_pct(lin['trained'])} | {_pct(lin['random_init'])} | "
                     f"{_diff(test)} | {_per_seed(test)} | |")
        for label, row in m["variants"].items():
            test = paired(row["trained"], row["random_init"])
            lines.append(f"| {label} | {_pct(row['trained'])} | {_pct(row['random_init'])} | "
                         f"{_diff(test)} | {_per_seed(test)} | "
                         f"{_chosen(row['chosen_trained'])} \\| "
                         f"{_chosen(row['chosen_random'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _diff(test: Any) -> str:
    if test.n < 2:
        return f"{100 * test.mean:+.1f}"
    return f"{100 * test.mean:+.1f} [{100 * test.low:+.1f}, {100 * test.high:+.1f}]"


def _per_seed(test: Any) -> str:
    return " ".join(f"{100 * d:+.1f}" for d in test.diffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, action="append",
                        help="folders of run directories [default: benchmarks/runs/tiny and "
                             "benchmarks/runs/knn_gap]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tiny/knn_gap.md"))
    args = parser.parse_args(argv)
    roots = args.runs or [Path("benchmarks/runs/tiny"), Path("benchmarks/runs/knn_gap")]
    torch.manual_seed(0)
    found = find_runs([r for r in roots if r.is_dir()])
    if not found:
        print(f"knn_gap: no finished run of the default recipes under "
              f"{', '.join(map(str, roots))}; run `python -m benchmarks` (tiny tables) or "
              f"`natkit run --seed S --out benchmarks/runs/knn_gap/seedS` first. Nothing written.",
              file=sys.stderr)
        return 0
    measured = {}
    for recipe, runs in found.items():
        print(f"{recipe}: seeds {sorted(runs)}", file=sys.stderr)
        measured[recipe] = measure(runs, lambda s: print("  " + s, file=sys.stderr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(measured))
    args.out.with_suffix(".json").write_text(json.dumps(measured, indent=1, default=str))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
