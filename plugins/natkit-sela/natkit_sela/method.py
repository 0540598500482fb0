"""SeLa as a natkit method: cross-entropy on pseudo-labels, relabelled over the whole dataset.

Every image holds one of K pseudo-labels. Training is plain cross-entropy
between the network's K outputs and the labels. At the start of every
``relabel_every``-th epoch the labels of all images are recomputed from the
network's outputs under the constraint that the K clusters stay equally large
(:func:`natkit_sela.balanced.balanced_labels`), which is what keeps the network
from putting every image in one cluster.

Written against natkit's public API only: the Method interface, the run's
RunView (whose ``outputs()`` gives the outputs of every image) and the ``basis``
targets of natkit's own registry for the initial labels.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F

import natkit
from natkit.errors import ConfigError
from natkit.methods import Batch, Method, MethodContext, StepLoss
from natkit.runview import RunView
from natkit.values import Bounds, OptionError
from natkit_sela.balanced import balanced_labels


class SelfLabelling(Method):
    """SeLa: cross-entropy on balanced pseudo-labels, relabelled by Sinkhorn-Knopp."""

    def __init__(self, *, context: MethodContext,
                 clusters: Annotated[int, Bounds(ge=2)] = 10,
                 relabel_every: Annotated[int, Bounds(ge=0)] = 1,
                 lam: Annotated[float, Bounds(ge=1e-3, le=1e6)] = 25.0,
                 iterations: Annotated[int, Bounds(ge=1)] = 10_000,
                 tol: Annotated[float, Bounds(gt=0.0, lt=1.0)] = 1e-3) -> None:
        """Self-labelling with balanced pseudo-labels (SeLa; Asano et al., ICLR 2020).

        Args:
            clusters: K, the number of pseudo-labels (SeLa's ImageNet runs: 3000); also the
                width of the network's output.
            relabel_every: relabel the whole dataset at the start of every k-th epoch, epoch 0
                included (as SeLa's first label step, from the random network); 0 keeps the
                initial random balanced labels.
            lam: SeLa's lambda, the sharpness of the label step (its entropic regularisation
                is 1 / lam); from 0.001 (near-uniform plans) to 1e6 (near-exact transport).
            iterations: the most Sinkhorn-Knopp iterations of one label step.
            tol: stop the label step once every cluster's share of the images is within this
                fraction of 1/K.
        """
        if clusters > context.num_images:
            raise OptionError("clusters", f"clusters must be at most the {context.num_images} "
                                          f"training images, got {clusters}")
        self.head_dim = clusters
        self.relabel_every = relabel_every
        self.lam = lam
        self.iterations = iterations
        self.tol = tol
        self.num_images = context.num_images
        self.device = context.device
        self.comm = context.comm
        # random and exactly balanced: natkit's basis targets give image i the one-hot
        # e_(id mod K) of its target id, and the ids are a random permutation
        basis = natkit.create_targets("basis", dim=clusters)
        ids = torch.randperm(context.num_images, generator=context.generator("sela/labels"))
        self.labels = basis(ids).argmax(dim=1).to(self.device)
        self.labelled_epoch = -1  # the epoch whose start last relabelled the dataset

    def relabels_in(self, epoch: int) -> bool:
        """Whether the dataset is relabelled at the start of ``epoch`` (0-based)."""
        # epoch 0 included: SeLa's own schedule (self-label's main.py) runs its first label
        # step before the first batch, from the random network, and trains on that
        return self.relabel_every > 0 and epoch % self.relabel_every == 0

    def start_epoch(self, epoch: int, run: RunView) -> dict[str, float] | None:
        # a run resumed inside an epoch it had already relabelled must not relabel again
        if not self.relabels_in(epoch) or self.labelled_epoch == epoch:
            return None
        new = balanced_labels(run.outputs(), self.lam, self.iterations, self.tol)
        # every rank solved the same problem from the same gathered outputs; taking rank 0's
        # answer keeps their labels identical even where their kernels round differently
        new = self.comm.broadcast(new, "sharing the pseudo-labels").to(self.device)
        sizes = torch.bincount(new, minlength=self.head_dim)
        self._check_balance(sizes)
        stats = torch.stack([(new != self.labels).double().mean(), sizes.min().double(),
                             sizes.max().double()]).tolist()
        self.labels, self.labelled_epoch = new, epoch
        return {"changed": stats[0], "smallest_cluster": stats[1], "largest_cluster": stats[2]}

    def _check_balance(self, sizes: torch.Tensor) -> None:
        """Refuse labels that put far more images in one cluster than its share: SeLa's point.

        A plan too flat to separate the images (``lam`` too small for the network's
        outputs) gives every image the same argmax; training on it would collapse.
        """
        fair, largest = self.num_images / self.head_dim, int(sizes.max())
        if largest > 2 * fair:
            raise ConfigError(f"method.lam: SeLa's label step put {largest} of {self.num_images} "
                              f"images in one cluster (a balanced share is {fair:.0f}); "
                              f"lam={self.lam:g} is too flat to separate them: raise it (SeLa: 25)")

    def loss(self, outputs: torch.Tensor, batch: Batch) -> StepLoss:
        # non_blocking: the host queues the copy of the indices and never waits for the device
        indices = batch.indices.to(self.device, non_blocking=True)
        return StepLoss(F.cross_entropy(outputs, self.labels[indices].to(outputs.device)))

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels.cpu(), "labelled_epoch": self.labelled_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        labels = state.get("labels") if isinstance(state, dict) else None
        if (not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64
                or labels.shape != (self.num_images,)):
            raise ValueError(f"its SeLa labels are not {self.num_images} int64 values")
        if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < self.head_dim):
            raise ValueError(f"its SeLa labels are not all in 0..{self.head_dim - 1}")
        epoch = state.get("labelled_epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < -1:
            raise ValueError(f"its SeLa labelled_epoch is not an epoch number (got {epoch!r})")
        self.labels = labels.to(self.device)
        self.labelled_epoch = epoch

    def describe(self) -> str:
        every = (f"relabel every {self.relabel_every} epochs" if self.relabel_every
                 else "random labels, never relabelled")
        return f"{self.head_dim} clusters | {every} | lambda {self.lam:g}"
