"""The fair evaluation of a run: trained features against the same network at initialisation.

Both networks are probed the same way. The random-init network is rebuilt from
the run's seed (the very weights training started from); the BatchNorm
statistics of both networks are recomputed on the unaugmented training images
(the random init holds BatchNorm's defaults, the trained network running averages
of augmented batches); features are standardised with training statistics; probe
settings are chosen on a validation split carved from the training split; the
test split is used once, at the end. A supervised network's classifier accuracy
is read with the statistics it was trained with: its head learnt on those.

Features never sit in memory all at once: each network's features of each split
are written to a float16 file (see natkit.evaluation.store) in a hidden folder
``.eval-features-<pid>`` of the run directory (of the system's temporary folder
without one), read back in chunks of ``eval.chunk_mb`` by the probes, and the
folder is deleted when the evaluation ends, however it ends.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from natkit import config as cfg
from natkit import files
from natkit.builders import build_method, initial_network, load_dataset, pick_device, read_run_config
from natkit.checkpoint import CHECKPOINT, METRICS, RESULTS, load_checkpoint, read_metrics
from natkit.errors import CheckpointError, ConfigError
from natkit.evaluation.checks import require_finite, require_fit
from natkit.evaluation.features import (
    batchnorm_statistics,
    recalibrate_batchnorm,
    restore_batchnorm,
    write_features,
)
from natkit.evaluation.knn import knn_probe, sample_neighbours
from natkit.evaluation.outputs import DETAILS, PLOTS, retire_outputs
from natkit.evaluation.phases import STORED, plan, run_order
from natkit.evaluation.plots import plot_filters, plot_loss, plot_neighbours, save_plot
from natkit.evaluation.probes import linear_probe, mlp_probe
from natkit.evaluation.reporting import QUIET, ProbeProgress, ProbeResult
from natkit.evaluation.store import FeatureSource, FeatureStore, store_folder
from natkit.evaluation.streamed import transfer_probe
from natkit.evaluation.tables import results_table
from natkit.progress import EvalProgress, format_seconds

# retire_outputs is re-exported: natkit.lifecycle imports it from here
__all__ = ["evaluate", "evaluate_run", "retire_outputs", "run_probes", "run_transfer"]


def run_probes(config: cfg.Config, train: tuple[torch.Tensor | FeatureSource, torch.Tensor],
               test: tuple[torch.Tensor | FeatureSource, torch.Tensor],
               device: torch.device, *, which: str = "trained",
               progress: EvalProgress | None = None) -> dict[str, ProbeResult]:
    """Every configured probe of stored features on one network's (features, labels) of both splits.

    Features are a tensor or a feature store; rows with a negative label are left
    out. With ``progress``, each probe is the planned phase ``'<probe>/<which>'``.
    """
    e = config.eval
    (train_x, train_y), (test_x, test_y) = train, test
    results: dict[str, ProbeResult] = {}
    for probe in run_order([p for p in e.probes if p in STORED]):
        reporter: ProbeProgress | EvalProgress = QUIET
        if progress is not None:
            progress.phase(f"{probe}/{which}")
            reporter = progress
        common = {"val_fraction": e.val_fraction, "seed": config.seed, "progress": reporter,
                  "device": device, "chunk_mb": e.chunk_mb}
        if probe == "linear":
            results[probe] = linear_probe(train_x, train_y, test_x, test_y,
                                          weight_decays=e.linear_weight_decay,
                                          iterations=e.linear_iterations, **common)
        elif probe == "mlp":
            results[probe] = mlp_probe(train_x, train_y, test_x, test_y, hidden=e.mlp_hidden,
                                       weight_decays=e.mlp_weight_decay, epochs=e.mlp_epochs,
                                       batch_size=e.batch_size, **common)
        else:
            results[probe] = knn_probe(train_x, train_y, test_x, test_y, ks=e.knn_k,
                                       temperature=e.knn_temperature,
                                       normalizations=e.knn_normalize, **common)
    return {probe: results[probe] for probe in e.probes if probe in results}


def run_transfer(config: cfg.Config, network: Any, train_set: Any, test_set: Any,
                 device: torch.device, progress: ProbeProgress = QUIET) -> ProbeResult:
    """The authors' transfer probe (natkit.evaluation.streamed) with the run's eval settings."""
    e = config.eval
    return transfer_probe(
        network, train_set, test_set, layer=e.layer, tap_pool=e.tap_pool,
        epochs=e.transfer_epochs, lr=e.transfer_lr, momentum=e.transfer_momentum,
        weight_decay=e.transfer_weight_decay, gamma=e.transfer_gamma,
        decay_start=e.transfer_decay_start, dropout=e.transfer_dropout, hidden=e.transfer_hidden,
        batch_size=e.batch_size, crops=e.transfer_crops, crop_fraction=e.transfer_crop_fraction,
        init=e.transfer_init, crop_norm=e.transfer_crop_norm, seed=config.seed, device=device,
        progress=progress)


def _json(data: Any) -> str:
    """``data`` as :func:`natkit.files.write_json` writes it: indented, with a trailing newline."""
    return json.dumps(data, indent=2) + "\n"


def _plain(result: ProbeResult) -> dict[str, Any]:
    """A probe's result for JSON: a NaN (nothing chosen on validation) becomes null."""
    return {k: (None if isinstance(v, float) and v != v else v)
            for k, v in dataclasses.asdict(result).items()}


def evaluate(config: cfg.Config, model_state: dict[str, torch.Tensor], *,
             run_dir: Path | None = None, console: Console | None = None,
             checkpoint: Path | None = None) -> dict[str, Any]:
    """Probe the trained network and its random initialisation; returns results and details.

    Progress goes to ``console`` (stderr by default): rich bars on a terminal,
    otherwise one line per phase (``evaluating: extracting features (trained) ...``),
    per fit of a linear or MLP probe, and every ``natkit.progress.HEARTBEAT_SECONDS``
    within a long phase, each with the remaining time once it can be estimated. A
    ``model_state`` whose keys or shapes do not fit the config's network is refused: a
    CheckpointError names the first key, and ``checkpoint``, the file it comes from.
    """
    console = console or Console(stderr=True)
    device = pick_device(config.device)
    e = config.eval
    train_set, test_set = load_dataset(config, "train"), load_dataset(config, "test")
    train_y, test_y = train_set.labels, test_set.labels
    if not bool((train_y >= 0).any()) or not bool((test_y >= 0).any()):
        raise ConfigError(f"eval: dataset '{config.data['name']}' has no labels to evaluate with")

    method = build_method(config, train_set, torch.device("cpu"))
    networks = {"trained": initial_network(config, train_set, method)}
    require_fit(networks["trained"], model_state, checkpoint)
    networks["trained"].load_state_dict(model_state)
    if e.baseline:
        networks["random_init"] = initial_network(config, train_set, method)
    for net in networks.values():
        if e.layer not in net.backbone.tap_names:
            raise ConfigError(f"eval.layer: '{e.layer}' is not a tap of this backbone; valid: "
                              f"{', '.join(net.backbone.tap_names)}")
    phases = plan(config, list(networks), len(train_set), len(test_set),
                  plots=run_dir is not None, classifier=method.classifier)
    with EvalProgress(console, phases) as progress, store_folder(run_dir) as folder:
        out = _evaluate(config, networks, train_set, test_set, device, run_dir, progress,
                        classifier=method.classifier, folder=folder)
        seconds = progress.finish()
    console.print(f"evaluated in {format_seconds(seconds)}", highlight=False, soft_wrap=True)
    return out


@torch.no_grad()
def _classify(net: Any, test_set: Any, device: torch.device, batch_size: int,
              progress: EvalProgress) -> float:
    """The accuracy of the network's own outputs (logits over the classes) on ``test_set``."""
    correct = 0
    for idx in torch.arange(len(test_set)).split(batch_size):
        predicted = net(test_set.get_batch(idx).to(device)).argmax(1).cpu()
        correct += int((predicted == test_set.labels[idx]).sum())
        progress.advance(len(idx))
    return correct / len(test_set)


def _evaluate(config: cfg.Config, networks: dict[str, Any], train_set: Any, test_set: Any,
              device: torch.device, run_dir: Path | None,
              progress: EvalProgress, classifier: bool, folder: Path) -> dict[str, Any]:
    e = config.eval
    train_y, test_y = train_set.labels, test_set.labels
    features: dict[str, tuple[FeatureStore, FeatureStore]] = {}
    as_trained = None
    for which, net in networks.items():
        progress.phase(f"features/{which}")
        net.to(device).eval()
        if which == "trained" and classifier:
            as_trained = batchnorm_statistics(net)
        # both networks alike: statistics of the unaugmented training images (the transfer
        # probe below runs the same recalibrated networks)
        recalibrate_batchnorm(net, train_set, device, e.batch_size, progress=progress)
        features[which] = tuple(write_features(net, ds, e.layer, device,
                                               folder / f"{which}-{split}.f16", e.batch_size,
                                               e.tap_pool, progress=progress)
                                for split, ds in (("train", train_set), ("test", test_set)))

    started = time.perf_counter()
    probes = {which: run_probes(config, (fx[0], train_y), (fx[1], test_y), device,
                                which=which, progress=progress)
              for which, fx in features.items()}
    if "transfer" in e.probes:
        for which, net in networks.items():
            progress.phase(f"transfer/{which}")
            probes[which]["transfer"] = run_transfer(config, net, train_set, test_set, device,
                                                     progress)
    results = {probe: {which: round(probes[which][probe].accuracy, 4) for which in probes}
               for probe in e.probes}
    details: dict[str, Any] = {
        "layer": e.layer,
        "feature_dim": int(features["trained"][0].dim),
        "train_images": len(train_set), "test_images": len(test_set),
        # float16 files on disk, deleted at the end; values beyond float16's range saturate
        "feature_store": {"bytes": sum(s.nbytes for fx in features.values() for s in fx),
                          "clipped_values": sum(s.clipped for fx in features.values()
                                                for s in fx)},
        "probe_seconds": round(time.perf_counter() - started, 1),
        "probes": {probe: {which: _plain(probes[which][probe]) for which in probes}
                   for probe in e.probes},
    }
    if classifier:  # the outputs are logits over the classes: how well do they classify?
        progress.phase("classifier")
        net = networks["trained"]
        # with the recomputed statistics, as the probes read the features; the running averages
        # of a short run lag its moving weights and can cost tens of points (docs/method.md)
        details["classifier_accuracy"] = _classify(net, test_set, device, e.batch_size, progress)
        restore_batchnorm(as_trained)
        details["classifier_accuracy_running_statistics"] = _classify(
            net, test_set, device, e.batch_size, progress)

    if e.plots and run_dir is not None:
        progress.phase("plots")
        loss, filters, neighbours = (run_dir / name for name in PLOTS)
        save_plot(lambda p: plot_loss(read_metrics(run_dir / METRICS), p), loss)
        progress.advance()
        save_plot(lambda p: plot_filters(networks["trained"].cpu(), p), filters)
        progress.advance()
        picks, found = sample_neighbours(*features["trained"], device, e.chunk_mb,
                                         seed=config.seed)
        save_plot(lambda p: plot_neighbours(train_set, test_set, picks, found, p), neighbours)
        progress.advance()
    return {"results": results, "details": details}


def evaluate_run(run_dir: Path, *, console: Console | None = None,
                 progress: Console | None = None) -> dict[str, Any]:
    """Evaluate a run directory's checkpoint; writes results.json and eval.json, prints a table.

    The table goes to ``console`` (stderr by default), the progress to ``progress``
    (by default ``console``). A checkpoint whose model state holds NaN or inf, or does
    not fit the run's config, is refused. results.json and eval.json are written
    together (both or neither) only at the end, after the plots (each replaced
    atomically): an interrupted evaluation leaves the previous results.json and
    eval.json in place.
    """
    run_dir = Path(run_dir)
    console = console or Console(stderr=True)
    config = read_run_config(run_dir)
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"'{run_dir}' holds no {CHECKPOINT} yet; train it first")
    state = load_checkpoint(path)
    require_finite(state["model"], path, "evaluated")
    out = evaluate(config, state["model"], run_dir=run_dir, console=progress or console,
                   checkpoint=path)
    out["details"]["epochs_trained"] = int(state["epoch"])
    out["details"]["step"] = int(state.get("step", 0))
    # together: results.json and eval.json never describe different evaluations
    files.write_files({run_dir / RESULTS: _json(out["results"]),
                       run_dir / DETAILS: _json(out["details"])})
    console.print(results_table(out["results"], out["details"]))
    return out
