"""Figures of a run: the loss curve, the first-layer filters and nearest neighbours."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt
import torch
from torch import nn

from natkit import files

# Where a figure is drawn: a path, or a file open for writing. Figures are PNG whatever the
# name (savefig's format is given): save_plot draws into a buffer, which has none.
Target = Path | BinaryIO


def save_plot(draw: Callable[[BinaryIO], object], path: Path) -> bool:
    """Draw a figure in memory, then write it atomically over ``path``; False if none was drawn.

    ``draw`` gets the file to draw into and returns False when it has nothing to
    draw: ``path`` is then left as it is.
    """
    buffer = io.BytesIO()
    if draw(buffer) is False:
        return False
    files.write_bytes(path, buffer.getvalue())
    return True


def plot_loss(records: list[dict[str, Any]], path: Target) -> None:
    """Training loss per step, and the fraction of reassigned targets per epoch."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.6,
                label="loss (per logged step)")
    if epochs:
        ax.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], "o-", lw=2,
                label="loss (epoch mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    changed = [(r["step"], r["changed"]) for r in epochs if r.get("changed") is not None]
    if changed:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in changed], [c for _, c in changed], "s--", color="tab:orange",
                 label="targets changed (reassignment epochs)")
        ax2.set_ylabel("fraction of targets changed")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("training")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def first_conv(module: nn.Module) -> nn.Conv2d | None:
    """The first Conv2d of a module, in registration order."""
    return next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)


def plot_filters(model: nn.Module, path: Target, limit: int = 96) -> bool:
    """Draw conv1's filters, composed with the preprocessor when it is linear (e.g. Sobel)."""
    conv = first_conv(model.backbone)
    if conv is None:
        return False
    weight = conv.weight.detach().float().cpu()
    composed = model.preprocess.compose_filters(weight)
    title = "conv1 filters" + (" (composed with the preprocessor)" if composed is not None else "")
    filters = composed if composed is not None else weight
    filters = filters[:limit]
    if filters.shape[1] not in (1, 3):
        filters = filters[:, :1]
    cols = min(16, len(filters))
    rows = math.ceil(len(filters) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.7 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, f in zip(axes.flat, filters, strict=False):
        lo, hi = f.min(), f.max()
        img = ((f - lo) / (hi - lo + 1e-12)).permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray",
                  interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return True


def plot_neighbours(train_set: Any, test_set: Any, picks: torch.Tensor, nearest: torch.Tensor,
                    path: Target) -> None:
    """Test images ``picks`` and, per row of ``nearest``, their nearest training images."""
    k = nearest.shape[1]
    fig, axes = plt.subplots(len(picks), k + 1, figsize=((k + 1) * 1.1, len(picks) * 1.1),
                             squeeze=False)
    for row, (q, nn_idx) in enumerate(zip(picks.tolist(), nearest, strict=True)):
        images = [test_set.get_batch(torch.tensor([q]))[0]]
        images += [train_set.get_batch(torch.tensor([int(i)]))[0] for i in nn_idx]
        for col, img in enumerate(images):
            ax = axes[row, col]
            shown = img.permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(shown.squeeze(-1) if shown.shape[-1] == 1 else shown, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("query" if col == 0 else f"#{col}", fontsize=8)
    fig.suptitle("nearest training images of test queries (frozen features)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_curve(curve: dict[int, dict[str, float]], path: Target) -> None:
    """Test accuracy of each probe against training epochs; epoch 0 is the random init."""
    fig, ax = plt.subplots(figsize=(6, 4))
    probes = sorted({probe for accs in curve.values() for probe in accs})
    for probe in probes:
        points = [(epoch, accs[probe]) for epoch, accs in sorted(curve.items()) if probe in accs]
        ax.plot([e for e, _ in points], [100 * a for _, a in points], "o-", label=probe)
    ax.set_xlabel("epochs trained (0: random init, BatchNorm recomputed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("frozen features against training epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
