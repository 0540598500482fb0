"""The fair evaluation of a run: trained features against the same network at initialisation.

Both networks are probed the same way. The random-init network is rebuilt from
the run's seed (the very weights training started from) and its BatchNorm
statistics are recomputed on the training images; features are standardised
with training statistics; probe settings are chosen on a validation split
carved from the training split; the test split is used once, at the end.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from natkit import config as cfg
from natkit.checkpoint import (
    CHECKPOINT,
    METRICS,
    RESULTS,
    atomic_write_json,
    load_checkpoint,
    read_metrics,
)
from natkit.engine import initial_network, load_dataset, pick_device, read_run_config
from natkit.errors import CheckpointError, ConfigError
from natkit.evaluation.features import extract_features, recalibrate_batchnorm
from natkit.evaluation.plots import plot_filters, plot_loss, plot_neighbours
from natkit.evaluation.probes import ProbeResult, knn_probe, linear_probe, mlp_probe

DETAILS = "eval.json"


def _labelled(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = y >= 0
    return x[keep], y[keep]


def run_probes(config: cfg.Config, train: tuple[torch.Tensor, torch.Tensor],
               test: tuple[torch.Tensor, torch.Tensor],
               device: torch.device) -> dict[str, ProbeResult]:
    """Every configured probe on one network's (features, labels) of both splits."""
    e = config.eval
    (train_x, train_y), (test_x, test_y) = _labelled(*train), _labelled(*test)
    common = {"val_fraction": e.val_fraction, "seed": config.seed}
    results: dict[str, ProbeResult] = {}
    for probe in e.probes:
        if probe == "linear":
            results[probe] = linear_probe(train_x, train_y, test_x, test_y,
                                          weight_decays=e.linear_weight_decay,
                                          iterations=e.linear_iterations, device=device,
                                          **common)
        elif probe == "mlp":
            results[probe] = mlp_probe(train_x, train_y, test_x, test_y, hidden=e.mlp_hidden,
                                       weight_decays=e.mlp_weight_decay, epochs=e.mlp_epochs,
                                       batch_size=e.batch_size, device=device, **common)
        else:
            results[probe] = knn_probe(train_x, train_y, test_x, test_y, ks=e.knn_k,
                                       temperature=e.knn_temperature, **common)
    return results


def evaluate(config: cfg.Config, model_state: dict[str, torch.Tensor], *,
             run_dir: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Probe the trained network and its random initialisation; returns results and details."""
    console = console or Console(stderr=True)
    device = pick_device(config.device)
    e = config.eval
    train_set, test_set = load_dataset(config, "train"), load_dataset(config, "test")
    train_y, test_y = train_set.labels, test_set.labels
    if not bool((train_y >= 0).any()) or not bool((test_y >= 0).any()):
        raise ConfigError(f"eval: dataset '{config.data['name']}' has no labels to evaluate with")

    networks = {"trained": initial_network(config, train_set)}
    networks["trained"].load_state_dict(model_state)
    if e.baseline:
        networks["random_init"] = initial_network(config, train_set)
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for which, net in networks.items():
        net.to(device).eval()
        if e.layer not in net.backbone.tap_names:
            raise ConfigError(f"eval.layer: '{e.layer}' is not a tap of this backbone; valid: "
                              f"{', '.join(net.backbone.tap_names)}")
        if which == "random_init":
            recalibrate_batchnorm(net, train_set, device, e.batch_size)
        features[which] = tuple(extract_features(net, ds, e.layer, device, e.batch_size,
                                                 e.tap_pool) for ds in (train_set, test_set))

    started = time.perf_counter()
    probes = {which: run_probes(config, (fx[0], train_y), (fx[1], test_y), device)
              for which, fx in features.items()}
    results = {probe: {which: round(probes[which][probe].accuracy, 4) for which in probes}
               for probe in e.probes}
    details: dict[str, Any] = {
        "layer": e.layer,
        "feature_dim": int(features["trained"][0].shape[1]),
        "train_images": len(train_set), "test_images": len(test_set),
        "probe_seconds": round(time.perf_counter() - started, 1),
        "probes": {probe: {which: dataclasses.asdict(probes[which][probe]) for which in probes}
                   for probe in e.probes},
    }
    if config.mode == "supervised":
        net = networks["trained"]
        with torch.no_grad():
            logits = torch.cat([net(test_set.get_batch(idx).to(device)).cpu()
                                for idx in torch.arange(len(test_set)).split(e.batch_size)])
        details["classifier_accuracy"] = float((logits.argmax(1) == test_y).float().mean())

    if run_dir is not None and e.plots:
        plot_loss(read_metrics(run_dir / METRICS), run_dir / "loss.png")
        plot_filters(networks["trained"].cpu(), run_dir / "filters.png")
        plot_neighbours(train_set, test_set, features["trained"][0], features["trained"][1],
                        run_dir / "neighbours.png", seed=config.seed)
    return {"results": results, "details": details}


def evaluate_run(run_dir: Path, *, console: Console | None = None) -> dict[str, Any]:
    """Evaluate a run directory's checkpoint; writes results.json and eval.json, prints a table."""
    run_dir = Path(run_dir)
    console = console or Console(stderr=True)
    config = read_run_config(run_dir)
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"'{run_dir}' holds no {CHECKPOINT} yet; train it first")
    state = load_checkpoint(path)
    try:
        out = evaluate(config, state["model"], run_dir=run_dir, console=console)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        raise CheckpointError(f"checkpoint '{path}' does not fit the run's config: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    out["details"]["epochs_trained"] = int(state["epoch"])
    atomic_write_json(run_dir / RESULTS, out["results"])
    atomic_write_json(run_dir / DETAILS, out["details"])
    console.print(results_table(out["results"], out["details"]))
    return out


def results_table(results: dict[str, dict[str, float]], details: dict[str, Any]) -> Table:
    """A rich table of test accuracies: trained, random init and the difference."""
    table = Table(title=f"test accuracy, frozen '{details['layer']}' features "
                        f"({details['feature_dim']} dims)")
    table.add_column("probe")
    table.add_column("trained", justify="right")
    table.add_column("random init", justify="right")
    table.add_column("difference", justify="right")
    for probe, accs in results.items():
        trained, random = accs.get("trained"), accs.get("random_init")
        diff = f"{100 * (trained - random):+.1f}" if random is not None else "-"
        table.add_row(probe, f"{100 * trained:.1f}%",
                      f"{100 * random:.1f}%" if random is not None else "-", diff)
    return table
