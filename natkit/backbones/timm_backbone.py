"""Any timm model as a backbone: ``timm:<model>``, built for the preprocessor's channels."""

from __future__ import annotations

import warnings
from typing import Any

import timm
import torch
from torch import nn

from natkit.backbones.base import Backbone
from natkit.errors import UnknownComponentError, did_you_mean


class TimmBackbone(Backbone):
    """A timm model without its classifier: ``model(x)`` gives pooled features."""

    def __init__(self, model_name: str, in_chans: int = 3, image_size: int = 224,
                 **options: Any) -> None:
        super().__init__()
        if not timm.is_model(model_name):
            raise UnknownComponentError(
                f"unknown timm model '{model_name}'{did_you_mean(model_name, timm.list_models())}; "
                "see timm.list_models()"
            )
        given = sorted(options)
        options.setdefault("pretrained", False)  # nothing can be downloaded here
        try:  # transformers take img_size; convolutional nets reject it at once
            self.model = timm.create_model(model_name, in_chans=in_chans, num_classes=0,
                                           **{"img_size": image_size, **options})
        except TypeError as exc:
            if "img_size" not in str(exc) or "img_size" in options:
                raise ValueError(f"timm rejected the options {given}: {exc}") from exc
            try:
                self.model = timm.create_model(model_name, in_chans=in_chans, num_classes=0,
                                               **options)
            except TypeError as exc2:  # an option this model does not take: the user's to fix
                raise ValueError(f"timm rejected the options {given}: {exc2}") from exc2
        self.model_name = model_name
        self.num_features = int(self.model.num_features)
        self.in_chans = in_chans
        info = getattr(self.model, "feature_info", None) or []
        self._taps = {f["module"]: f["reduction"] for f in info if "module" in f}
        reduction = max(self._taps.values(), default=1)
        if image_size // reduction < 2:
            warnings.warn(
                f"timm:{model_name} downsamples by {reduction}: {image_size} px inputs end as "
                f"{max(image_size // reduction, 1)}x{max(image_size // reduction, 1)} maps; "
                "use larger images or a model with a small-input stem",
                stacklevel=2,
            )

    def tap_modules(self) -> dict[str, nn.Module]:
        modules = dict(self.model.named_modules())
        return {name: modules[name] for name in self._taps if name in modules}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def create(model_name: str, *, in_chans: int = 3, image_size: int = 224,
           **options: Any) -> TimmBackbone:
    """Any timm model (no pretrained weights), e.g. timm:resnet18; options go to timm."""
    return TimmBackbone(model_name, in_chans, image_size, **options)
