"""Balanced pseudo-labels: SeLa's equipartition by Sinkhorn-Knopp, through POT."""

from __future__ import annotations

import ot
import torch


def balanced_labels(logits: torch.Tensor, lam: float = 25.0, iterations: int = 10_000,
                    tol: float = 1e-3) -> torch.Tensor:
    """One label in ``0..K-1`` per row of ``logits`` ``[N, K]``, the K clusters of equal size.

    SeLa's label step: the transport plan Q between the N images (mass 1/N each)
    and the K clusters (mass 1/K each) that maximises ``<Q, log p> + H(Q) / lam``,
    with ``p`` the softmax of the logits, is ``p ** lam`` rescaled to those marginals
    (Sinkhorn-Knopp). That is entropic optimal transport with cost ``-log p`` and
    regularisation ``1 / lam``, solved by POT in the log domain (no underflow for a
    large ``lam``) on the logits' device. It stops once every cluster's mass is within
    ``tol`` (relative) of 1/K, or after ``iterations``. Each image takes its row's
    largest entry.
    """
    n, k = logits.shape
    cost = -torch.log_softmax(logits.detach().double(), dim=1)
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
    b = torch.full((k,), 1.0 / k, dtype=cost.dtype, device=cost.device)
    # POT stops on the L2 norm of the clusters' mass errors; below tol / K, each is within
    # tol of 1/K. A confident network (logits spread over ~20) needs thousands of
    # iterations: stopped after a hundred, the clusters still differ by a factor of 3 or more.
    plan = ot.sinkhorn(a, b, cost, 1.0 / lam, method="sinkhorn_log", numItermax=iterations,
                       stopThr=tol / k, warn=False)
    if not bool(torch.isfinite(plan).all()):
        raise FloatingPointError("the Sinkhorn plan of the pseudo-labels is not finite")
    return plan.argmax(dim=1)
