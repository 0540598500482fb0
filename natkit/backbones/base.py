"""The backbone interface: pooled features plus named feature taps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor following timm's convention.

    ``forward(x)`` returns pooled features ``[batch, num_features]``. Named
    intermediate outputs ("taps", e.g. conv1..conv5) are read with
    :meth:`forward_taps`, so a probe on any layer needs no surgery.
    ``default_head`` gives the hidden widths of the projection head that
    suits this architecture (AlexNet's fc6 and fc7; none for a timm model).
    """

    num_features: int
    default_head: tuple[int, ...] = ()

    def tap_modules(self) -> dict[str, nn.Module]:
        """Modules whose outputs are exposed as named taps."""
        return {}

    @property
    def tap_names(self) -> list[str]:
        """Valid names for :meth:`forward_taps`; ``last`` is the pooled output."""
        return [*self.tap_modules(), "last"]

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the network once and return the outputs of the named taps."""
        modules = self.tap_modules()
        unknown = [n for n in names if n != "last" and n not in modules]
        if unknown:
            raise ValueError(f"unknown tap '{unknown[0]}'; valid: {', '.join(self.tap_names)}")
        outputs: dict[str, torch.Tensor] = {}
        handles = [
            modules[n].register_forward_hook(
                lambda _m, _i, out, n=n: outputs.__setitem__(n, out)
            )
            for n in names if n != "last"
        ]
        try:
            pooled = self(x)
        finally:
            for h in handles:
                h.remove()
        if "last" in names:
            outputs["last"] = pooled
        return {n: outputs[n] for n in names}
