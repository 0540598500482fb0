"""The phases of an evaluation, planned before it starts so its remaining time can be told."""

from __future__ import annotations

from natkit import config as cfg
from natkit.evaluation.outputs import PLOTS
from natkit.progress import Phase

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


def plan(config: cfg.Config, networks: list[str], train_images: int, test_images: int,
         plots: bool = True, classifier: bool = False) -> list[Phase]:
    """The phases of an evaluation, in the order :func:`~natkit.evaluation.protocol.evaluate` runs them."""
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
