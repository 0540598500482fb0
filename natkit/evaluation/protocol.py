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
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from natkit import config as cfg
from natkit import files
from natkit.builders import build_method, initial_network, load_dataset, pick_device, read_run_config
from natkit.checkpoint import (
    CHECKPOINT,
    METRICS,
    RESULTS,
    load_checkpoint,
    read_metrics,
)
from natkit.errors import CheckpointError, ConfigError, OutputError
from natkit.evaluation.checks import require_finite
from natkit.evaluation.features import (
    batchnorm_statistics,
    recalibrate_batchnorm,
    restore_batchnorm,
    write_features,
)
from natkit.evaluation.plots import plot_filters, plot_loss, plot_neighbours
from natkit.evaluation.probes import (
    QUIET,
    ProbeProgress,
    ProbeResult,
    Rows,
    knn_probe,
    linear_probe,
    mlp_probe,
    nearest,
    statistics,
)
from natkit.evaluation.store import FeatureSource, FeatureStore
from natkit.evaluation.streamed import transfer_probe
from natkit.progress import EvalProgress, Phase, format_seconds

DETAILS = "eval.json"
PLOTS = ("loss.png", "filters.png", "neighbours.png")
# Files an evaluation writes into the run directory: they describe one checkpoint.
OUTPUTS = (RESULTS, DETAILS, *PLOTS)
PROBE_NAMES = {"linear": "linear probe", "mlp": "MLP probe", "knn": "kNN probe",
               "transfer": "transfer probe"}
# The probes run cheapest first (they do not depend on each other's order): the MLP probe,
# the longest, is then the only kind of phase still untimed once the first network's others
# are done, and the remaining time can be told from its first epoch on. The transfer probe
# reads images, not stored features, and runs the network on every batch: it comes last.
RUN_ORDER = ("knn", "linear", "mlp", "transfer")
STORED = ("knn", "linear", "mlp")  # the probes of stored features (run_probes)


def run_order(probes: list[str]) -> list[str]:
    """``probes`` in the order they run."""
    return sorted(probes, key=lambda p: RUN_ORDER.index(p) if p in RUN_ORDER else len(RUN_ORDER))


STORE_PREFIX = ".eval-features-"  # the evaluation's feature files live in <run>/.eval-features-<pid>/


def plan(config: cfg.Config, networks: list[str], train_images: int, test_images: int,
         plots: bool = True, classifier: bool = False) -> list[Phase]:
    """The phases of an evaluation, in the order :func:`evaluate` runs them."""
    e = config.eval
    phases = []
    for which in networks:  # a pass to recompute BatchNorm's statistics, then the features
        phases.append(Phase(
            f"features/{which}", f"recalibrating BatchNorm and extracting features ({which})",
            "features", 2 * train_images + test_images, "images", announce_steps=False))
    for which in networks:
        for probe in run_order(e.probes):
            label = f"{PROBE_NAMES[probe]} ({which})"
            if probe == "linear":
                phases.append(Phase(f"linear/{which}", label, "linear",
                                    len(e.linear_weight_decay) + 1, "fits"))
            elif probe == "mlp":
                phases.append(Phase(f"mlp/{which}", label, "mlp",
                                    (len(e.mlp_weight_decay) + 1) * e.mlp_epochs, "epochs"))
            elif probe == "transfer":
                phases.append(Phase(f"transfer/{which}", label, "transfer", e.transfer_epochs,
                                    "epochs"))
            else:
                phases.append(Phase(f"knn/{which}", label, "knn",
                                    len(e.knn_k) * len(e.knn_normalize) + 1,
                                    "predictions", announce_steps=False))
    if classifier:
        # read twice: with the recomputed statistics, and with the running averages of training
        phases.append(Phase("classifier", "classifier accuracy (trained)", "features",
                            2 * test_images, "images", announce_steps=False))
    if e.plots and plots:
        phases.append(Phase("plots", "drawing " + ", ".join(PLOTS), "plots", len(PLOTS), "plots",
                            announce_steps=False, estimated=False))
    return phases


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
        seed=config.seed, device=device, progress=progress)


def _plain(result: ProbeResult) -> dict[str, Any]:
    """A probe's result for JSON: a NaN (nothing chosen on validation) becomes null."""
    return {k: (None if isinstance(v, float) and v != v else v)
            for k, v in dataclasses.asdict(result).items()}


def _save_plot(draw: Callable[[Path], object], path: Path) -> None:
    """Draw a figure into a temporary file, then rename it over ``path``."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        draw(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def evaluate(config: cfg.Config, model_state: dict[str, torch.Tensor], *,
             run_dir: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Probe the trained network and its random initialisation; returns results and details.

    Progress goes to ``console`` (stderr by default): rich bars on a terminal,
    otherwise one line per phase (``evaluating: extracting features (trained) ...``),
    per fit of a linear or MLP probe, and every ``natkit.progress.HEARTBEAT_SECONDS``
    within a long phase, each with the remaining time once it can be estimated.
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
    networks["trained"].load_state_dict(model_state)
    if e.baseline:
        networks["random_init"] = initial_network(config, train_set, method)
    for net in networks.values():
        if e.layer not in net.backbone.tap_names:
            raise ConfigError(f"eval.layer: '{e.layer}' is not a tap of this backbone; valid: "
                              f"{', '.join(net.backbone.tap_names)}")
    phases = plan(config, list(networks), len(train_set), len(test_set),
                  plots=run_dir is not None, classifier=method.classifier)
    with EvalProgress(console, phases) as progress, _store_folder(run_dir) as folder:
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


@contextmanager
def _store_folder(run_dir: Path | None) -> Iterator[Path]:
    """A fresh folder for the feature files, deleted on the way out (success, error or Ctrl-C)."""
    try:
        if run_dir is None:
            folder = Path(tempfile.mkdtemp(prefix="natkit" + STORE_PREFIX))
        else:
            _remove_orphans(Path(run_dir))
            folder = Path(run_dir) / f"{STORE_PREFIX}{os.getpid()}"
            shutil.rmtree(folder, ignore_errors=True)  # left by a killed process of this pid
            folder.mkdir()
    except OSError as exc:
        raise OutputError(f"eval: cannot create a folder for the feature files: "
                          f"{exc.strerror or exc}") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_orphans(run_dir: Path) -> None:
    """Delete the feature folders of evaluations killed outright (their process is gone)."""
    for folder in run_dir.glob(f"{STORE_PREFIX}*"):
        pid = folder.name.removeprefix(STORE_PREFIX)
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # alive, owned by another user


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
        _save_plot(lambda p: plot_loss(read_metrics(run_dir / METRICS), p), loss)
        progress.advance()
        _save_plot(lambda p: plot_filters(networks["trained"].cpu(), p), filters)
        progress.advance()
        picks, found = _neighbours(*features["trained"], device, e.chunk_mb, seed=config.seed)
        _save_plot(lambda p: plot_neighbours(train_set, test_set, picks, found, p), neighbours)
        progress.advance()
    return {"results": results, "details": details}


def _neighbours(train: FeatureStore, test: FeatureStore, device: torch.device, chunk_mb: float,
                queries: int = 8, k: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random test images and their ``k`` nearest training images, in standardised features."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(test), generator=g)[:queries]
    everything = torch.zeros(len(train), dtype=torch.int64)  # every row, labelled or not
    bank = Rows.labelled(train, everything, chunk_mb)
    mean, std = statistics(bank)
    order = picks.sort()
    query = Rows(test, order.values.numpy(), torch.zeros(len(picks), dtype=torch.int64),
                 bank.chunk).standardised(mean, std)
    found = torch.cat([where for _, where in nearest(bank.standardised(mean, std), query, k,
                                                     device)])
    found = torch.as_tensor(bank.index)[found]  # bank positions are training indices here
    return order.values, found


def stale_name(name: str) -> str:
    """Where an outdated evaluation output is moved: results.json -> results.stale.json."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.stale.{suffix}" if dot else f"{name}.stale"


def retire_outputs(run_dir: Path) -> list[tuple[str, Path]]:
    """Move the evaluation outputs of ``run_dir`` aside, as they describe an older checkpoint.

    results.json becomes results.stale.json, eval.json eval.stale.json, each plot
    ``NAME.stale.png``, replacing older stale ones. Returns ``(name, new path)``
    for each file moved.
    """
    moved = []
    for name in OUTPUTS:
        path = Path(run_dir) / name
        if path.exists():
            target = path.with_name(stale_name(name))
            os.replace(path, target)
            moved.append((name, target))
    return moved


def evaluate_run(run_dir: Path, *, console: Console | None = None,
                 progress: Console | None = None) -> dict[str, Any]:
    """Evaluate a run directory's checkpoint; writes results.json and eval.json, prints a table.

    The table goes to ``console`` (stderr by default), the progress to ``progress``
    (by default ``console``). A checkpoint whose model state holds NaN or inf is
    refused. results.json and eval.json are written (atomically) only at the end, after
    the plots (each replaced atomically): an interrupted evaluation leaves the previous
    results.json and eval.json in place.
    """
    run_dir = Path(run_dir)
    console = console or Console(stderr=True)
    config = read_run_config(run_dir)
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"'{run_dir}' holds no {CHECKPOINT} yet; train it first")
    state = load_checkpoint(path)
    require_finite(state["model"], path, "evaluated")
    try:
        out = evaluate(config, state["model"], run_dir=run_dir, console=progress or console)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):
            raise
        raise CheckpointError(f"checkpoint '{path}' does not fit the run's config: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    out["details"]["epochs_trained"] = int(state["epoch"])
    out["details"]["step"] = int(state.get("step", 0))
    files.write_json(run_dir / RESULTS, out["results"])
    files.write_json(run_dir / DETAILS, out["details"])
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
