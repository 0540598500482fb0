"""Any timm model as a backbone: ``timm:<model>``, built for the preprocessor's channels.

Options under ``timm:<model>`` go to ``timm.create_model``. They are checked when
the config is resolved (:func:`check_options`), before anything is trained:

* weights are refused: ``pretrained`` (natkit cannot download them, and a
  pretrained network defeats the comparison with the random initialisation)
  and the other options that load weights or files;
* options natkit sets itself (``num_classes``, ``features_only``) are refused;
* values must be plain YAML: true/false, numbers (finite), strings, null, or
  lists of them;
* the model is then built on PyTorch's ``meta`` device (no memory, no weights)
  with the options: an option its constructor refuses (``TypeError`` for an
  unknown keyword or a wrong type, ``ValueError`` for a bad value) is named, and
  options the constructor annotates are type-checked against the annotation.
  Where a model cannot be built on the meta device, the real build at the start
  of the run reports a refused option instead.
"""

from __future__ import annotations

import math
import typing
import warnings
from typing import Any

import timm
import torch
from torch import nn

from natkit.backbones.base import Backbone
from natkit.errors import ConfigError, UnknownComponentError, did_you_mean
from natkit.values import OptionError, coerce, shown

_NO_WEIGHTS = ("natkit builds timm models at random initialisation: it cannot download weights, "
               "and a pretrained network would defeat the comparison with the random-init "
               "baseline")
# Options of timm.create_model that bring in weights or files.
REFUSED = {
    "pretrained": f"{_NO_WEIGHTS}; remove it (or set it to false)",
    "pretrained_cfg": f"it selects pretrained weights; {_NO_WEIGHTS}",
    "pretrained_cfg_overlay": f"it selects pretrained weights; {_NO_WEIGHTS}",
    "checkpoint_path": f"it loads weights from a file; {_NO_WEIGHTS}",
    "cache_dir": f"it is where downloaded weights go; {_NO_WEIGHTS}",
}
# Options natkit passes itself.
SET_BY_NATKIT = {
    "num_classes": "set by natkit (0: the backbone gives pooled features, the head follows)",
    "features_only": "set by natkit: the backbone must give pooled features",
}


def _known_model(model_name: str) -> None:
    if not timm.is_model(model_name):
        raise UnknownComponentError(
            f"unknown timm model '{model_name}'{did_you_mean(model_name, timm.list_models())}; "
            "see timm.list_models()"
        )


def _check_plain(key: str, value: Any, depth: int = 0) -> None:
    """A plain YAML value: true/false, a finite number, a string, null, or a list of them."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OptionError(key, f"{key}: expected a finite number, got {shown(value)}")
        return
    if isinstance(value, (list, tuple)) and depth < 4:
        for item in value:
            _check_plain(key, item, depth + 1)
        return
    raise OptionError(key, f"{key}: expected a plain value (true/false, a number, a string, "
                           f"null or a list of them), got {shown(value)}")


def _build(model_name: str, *, meta: bool, **kwargs: Any) -> nn.Module:
    device = torch.device("meta") if meta else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if device is None:
            return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        with device:
            return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)


_REJECTS = (TypeError, ValueError)  # an unknown keyword or a wrong type; a value out of range


def _refused_on_meta(model_name: str, options: dict[str, Any]) -> tuple[nn.Module | None, dict]:
    """Build on the meta device: (the model, {}) or (None, {option: exception type name}).

    ({} also when the model cannot be built on the meta device at all: then only
    the real build can tell.)
    """
    try:
        return _build(model_name, meta=True, **options), {}
    except _REJECTS:
        pass
    except Exception:  # this model does not build on the meta device
        return None, {}
    try:
        _build(model_name, meta=True)
    except Exception:  # not even without options: unknowable here
        return None, {}
    refused = {}
    for key, value in options.items():
        try:
            _build(model_name, meta=True, **{key: value})
        except _REJECTS as exc:
            refused[key] = type(exc).__name__
        except Exception:  # unknowable for this option
            continue
    return None, refused or {key: "" for key in options}  # together, not one by one


def _rejected(model_name: str, given: list[str], refused: dict[str, str]) -> OptionError:
    first = next(iter(refused))
    why = {"TypeError": " (TypeError: an unknown keyword, or a value of the wrong type)",
           "ValueError": " (ValueError: a value it does not accept)"}.get(refused[first], "")
    names = ", ".join(refused)
    together = " together" if len(refused) > 1 and not refused[first] else ""
    return OptionError(first, f"timm rejected the options {given}: timm's '{model_name}' "
                              f"constructor refuses {names}{together}{why}")


def check_options(model_name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check the options of ``timm:<model_name>`` without building it for real; returns them.

    Raises :class:`~natkit.registry.OptionError` naming the first bad option.
    """
    _known_model(model_name)
    given = sorted(options)
    for key in given:
        value = options[key]
        if key in REFUSED and not (key == "pretrained" and value in (False, None)):
            raise OptionError(key, f"{key}: refused: {REFUSED[key]}")
        if key in SET_BY_NATKIT:
            raise OptionError(key, f"{key}: {SET_BY_NATKIT[key]}; remove it")
        _check_plain(key, value)
    kwargs = {k: v for k, v in options.items() if k not in REFUSED}
    if not kwargs:
        return dict(options)
    model, refused = _refused_on_meta(model_name, kwargs)
    if refused:
        raise _rejected(model_name, given, refused)
    checked = dict(options)
    if model is not None:  # the constructor's own annotations, where it has them
        try:
            hints = typing.get_type_hints(type(model).__init__)
        except Exception:  # an unresolvable annotation: no type check
            hints = {}
        for key in kwargs:
            if key in hints:
                try:
                    checked[key] = coerce(kwargs[key], hints[key], key)
                except ConfigError as exc:
                    raise OptionError(key, f"{exc} (the type timm's '{model_name}' "
                                           "constructor declares)") from None
    return checked


class TimmBackbone(Backbone):
    """A timm model without its classifier: ``model(x)`` gives pooled features."""

    def __init__(self, model_name: str, in_chans: int = 3, image_size: int = 224,
                 **options: Any) -> None:
        super().__init__()
        options = check_options(model_name, options)
        given = sorted(options)
        options = {k: v for k, v in options.items() if k != "pretrained"}  # always False here
        # the img_size the model was built for (None: it takes none), for export's load recipe
        self.img_size: int | None = options.get("img_size", image_size)
        try:  # transformers take img_size; convolutional nets refuse it
            self.model = _build(model_name, meta=False, in_chans=in_chans,
                                **{"img_size": image_size, **options})
        except TypeError:
            self.img_size = None
            if "img_size" in options:
                raise _rejected(model_name, given, {"img_size": "TypeError"}) from None
            try:
                self.model = _build(model_name, meta=False, in_chans=in_chans, **options)
            except TypeError:
                if not options:
                    raise
                raise _rejected(model_name, given, {k: "TypeError" for k in options}) from None
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


create.check_options = check_options  # type: ignore[attr-defined]  # run by the config
