"""The authors' transfer protocol: an MLP on frozen conv5 features of crops streamed every epoch.

This is ``test.lua`` of the authors' code (facebookresearch/noise-as-targets, with
``alexnet.lua``, ``imagenet.lua`` and ``optimutil.lua``), as ``test.sh`` runs it:

* **Features.** ``feature = mainnet:get(1), mainnet:get(2)`` in evaluate mode
  (test.lua 81-86): the fixed Sobel layer and the conv layers, conv5 max-pooled and
  flattened (6 x 6 x 256 = 9216 at 224 px, alexnet.lua 53-54). Here the network's own
  ``preprocess`` and the tap ``layer`` (``last``: the pooled conv5 of natkit's AlexNet;
  an intermediate map is average-pooled to ``tap_pool`` as natkit's other probes do),
  in eval mode (BatchNorm running statistics) and without gradients. Nothing is
  standardised: the MLP's BatchNorm follows its first layer.
* **MLP.** ``arch.train(config):get(2)`` (test.lua 96-97, alexnet.lua 58-72): Linear-BN-ReLU-
  Dropout(0.5)-Linear-BN-ReLU-Linear, 4096 wide, trained in training mode (dropout on,
  batch statistics).
* **Training data.** Every epoch each image is decoded again and cropped at random: a
  224 x 224 crop at a uniformly random offset of the short-side-256 image, flipped with
  probability 1/2 (imagenet.lua 23-43, 72-77), so conv5 is recomputed for every batch.
  Batches of 256 with the last partial batch dropped (test.lua 28, 116-133: ``skip-last``).
* **Loss and update.** Cross-entropy averaged over the batch (test.lua 113); after the
  backward pass (test.lua 265-268) the gradient is replaced by a running average
  ``m = 0.9 m + 0.1 g`` started at zero (optimutil.lua 30-43: momentum as an average,
  not torch.optim.SGD's sum), every weight except BatchNorm's is shrunk by
  ``1 - 1e-8`` (optimutil.lua 12-28: biases are not decayed, and the shrink does not
  scale with the learning rate), then ``w -= lr * m`` for every parameter
  (torchnet's SGDEngine, ``network:updateParameters(lr)``).
* **Learning rate.** 0.1 (test.lua 33, test.sh 16), from epoch 20 on
  ``lr / (1 + 0.3 (e - 20))`` with ``e`` the epochs already done (test.lua 232-247;
  SGDEngine counts epochs from 0). ``test.sh`` trains 100 epochs (``-maxepoch 100``).
* **Test.** Ten crops of each test image, ``c, tl, tr, bl, br`` of the image then the same
  five of its mirror image (imagenet.lua 79-93), through the frozen features and the MLP
  in evaluate mode, the ten outputs (the final Linear's, before any softmax) summed and
  the largest taken (alexnet.lua 89-100: ``View(10, nclass)``, ``Sum(2)``). The crops are
  standardised together: ``transform.merge`` stacks them into one ``10 x 3 x 224 x 224``
  tensor and ``transform.normalize`` subtracts its mean and divides by its standard
  deviation (torchnet transform.lua 342-371, utils/table.lua 113-132), one pair for all
  ten (``crop_norm='joint'``; natkit's default ``'each'`` standardises each crop alone, as
  the preprocessor does every image).
* **Initialisation.** The MLP's layers keep Torch7's defaults (``init='torch7'``:
  Linear weights and biases U(+-1/sqrt(fan_in)), BatchNorm weights U(0, 1)); natkit's
  default ``'default'`` differs only in BatchNorm's weights, 1.

Where natkit differs, and why:

* natkit's images come at ``data.image_size``; the crop side is the network's own input
  size where it was trained on crops (``augment.crop_size``: the authors' 224 of 256),
  else ``round(crop_fraction * image_size)`` with the authors' ratio 224 / 256 = 0.875.
* The training order is reshuffled every epoch. test.lua wraps the data in a
  ``tnt.ShuffleDataset`` (124) it never resamples, so every epoch sees the same batches (with
  new crops), most likely by accident of torchnet's API rather than by choice.
* test.lua tests after *every* epoch (316-318) on ImageNet's validation set and logs each; its code
  chooses nothing with it, so natkit reports what the last epoch gives. natkit tests once,
  after the last epoch, every labelled test image (test.lua drops the last partial test
  batch of 64, 145-150).
* Nothing is chosen on validation. ``val_accuracy`` is ``nan`` unless ``val_fraction`` holds
  a stratified part of the training split out of training, in which case it is the same
  ten-crop accuracy measured there.
* ``train_accuracy`` is what test.lua logs as ``trainAcc`` (260, 337): the accuracy on the augmented
  training batches of the last epoch, in training mode (dropout on), as they were trained.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from natkit.augment import center_crop, random_crop
from natkit.datasets import stratified_split
from natkit.evaluation.reporting import QUIET, ProbeProgress, ProbeResult
from natkit.transfer import to_float
from natkit.weightinit import INITS, initialise_

AUTHORS_CROP_FRACTION = 224 / 256  # test.lua 50-51: cropsize 224 of imsize 256
DECAY_START = 20  # test.lua 241: the epoch the learning rate starts to decay
CORNERS = ("c", "tl", "tr", "bl", "br")  # imagenet.lua 83-92, then the same on the flipped image
CROP_NORMS = ("each", "joint")


def transfer_lr(epoch: int, lr: float, gamma: float, decay_start: int = DECAY_START) -> float:
    """The learning rate of epoch ``epoch`` (counted from 0), as test.lua's onStartEpoch sets it.

    ``lr`` until ``decay_start``, then ``lr / (1 + gamma (epoch - decay_start))`` (test.lua 241-242).
    """
    if epoch >= decay_start:
        return lr / (1 + gamma * (epoch - decay_start))
    return lr


def transfer_mlp(d: int, classes: int, hidden: int = 4096, dropout: float = 0.5,
                 init: str = "default") -> nn.Sequential:
    """alexnet.lua's classifier (58-72): Linear-BN-ReLU-Dropout-Linear-BN-ReLU-Linear.

    At ``dropout=0.5`` it is :func:`natkit.evaluation.probes.mlp_model`, layer for layer;
    ``dropout=0`` leaves the dropout out, as alexnet.lua 63 does. ``init='torch7'`` draws
    it as test.lua's ``arch.train(config):get(2)`` is (:func:`natkit.weightinit.torch7_init_`).
    """
    layers: list[nn.Module] = [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
               nn.Linear(hidden, classes)]
    return initialise_(nn.Sequential(*layers), init)


class AuthorsSGD:
    """test.lua's update of the MLP: optimutil's momentum and weight decay, then SGDEngine's step.

    Per step, with ``g`` the gradient of the batch-mean loss:
    ``m = momentum m + (1 - momentum) g`` (``m`` starts at zero), every weight of a layer
    other than BatchNorm is multiplied by ``1 - weight_decay`` (biases are not), and every
    parameter takes ``p -= lr m``. This is not ``torch.optim.SGD``: its momentum sums
    gradients (a steady step ``lr g / (1 - momentum)``, here ``lr g``), its first step
    takes the whole gradient, and its weight decay scales with the learning rate.
    """

    def __init__(self, model: nn.Module, momentum: float, weight_decay: float) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.decayed = [m.weight for m in model.modules()
                        if not isinstance(m, _BatchNorm)
                        and isinstance(getattr(m, "weight", None), torch.Tensor)]
        self.momentum, self.weight_decay = momentum, weight_decay

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        steps = []
        for p, m in zip(self.params, self.buffers, strict=True):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if self.momentum > 0:  # optimutil.lua 38-42
                m.mul_(self.momentum).add_(g, alpha=1 - self.momentum)
                g = m
            steps.append(g)
        if self.weight_decay > 0:  # optimutil.lua 22-27
            for w in self.decayed:
                w.mul_(1 - self.weight_decay)
        for p, g in zip(self.params, steps, strict=True):  # nn.Module:updateParameters(lr)
            p.add_(g, alpha=-lr)


def eval_crops(images: torch.Tensor, size: int, count: int = 10) -> torch.Tensor:
    """The test crops of each image, ``[n, count, c, size, size]``.

    ``count=10``: the centre, top-left, top-right, bottom-left and bottom-right
    ``size`` x ``size`` crops of the image, then the same five of the image flipped
    left to right (imagenet.lua 82-93; the centre offset rounds down, as
    ``image.crop(img, 'c', ...)``). ``count=1``: the centre crop only (``-testsinglecrop``).
    """
    if count not in (1, 10):
        raise ValueError(f"count must be 1 or 10 crops, got {count}")
    height, width = images.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"crop size must be between 1 and the images' {height}x{width}, "
                         f"got {size}")
    if count == 1:
        return center_crop(images, size)[:, None]
    bottom, right = height - size, width - size
    out = []
    for img in (images, images.flip(-1)):
        out.append(center_crop(img, size))
        for top, left in ((0, 0), (0, right), (bottom, 0), (bottom, right)):
            out.append(img[..., top:top + size, left:left + size])
    return torch.stack(out, dim=1)


def standardise_jointly(views: torch.Tensor) -> torch.Tensor:
    """``[n, k, c, h, w]`` crops, each image's ``k`` standardised together.

    One mean and one (unbiased) standard deviation over all ``k * c * h * w`` values of an
    image's crops, as torchnet's ``transform.normalize`` does to the tensor
    ``transform.merge`` stacks (``z:std()``, ``z:add(-z:mean())``, ``z:div(std)``). A blank
    image stays blank (its standard deviation is clamped as the Sobel preprocessor's is).
    """
    flat = views.flatten(1)
    shape = (-1,) + (1,) * (views.ndim - 1)
    mean = flat.mean(dim=1).view(shape)
    std = flat.std(dim=1).clamp_min(1e-6).view(shape)
    return (views - mean) / std


@contextlib.contextmanager
def _standardised_here(preprocess: nn.Module) -> Iterator[None]:
    """The preprocessor's own standardisation of each image, off while its input is already so."""
    preprocess.normalize = False
    try:
        yield
    finally:
        preprocess.normalize = True


def crop_side(network: nn.Module, image_size: int, crop_fraction: float = AUTHORS_CROP_FRACTION) -> int:
    """The crop side: the network's input size where it was trained on crops, else a fraction.

    A network trained on ``augment.crop_size`` crops (the authors' 224 of 256) is probed
    on crops of that size; one trained on whole images on ``round(crop_fraction * image_size)``.
    """
    size = getattr(network, "input_size", None)
    if size is None:
        size = round(crop_fraction * image_size)
    return max(1, min(int(size), int(image_size)))


@torch.no_grad()
def frozen_features(network: nn.Module, images: torch.Tensor, layer: str = "last",
                    tap_pool: int = 2) -> torch.Tensor:
    """Features ``[n, d]`` of float images at tap ``layer``; a 4-d map is average-pooled first.

    The caller puts ``network`` in eval mode; these are the features natkit's other probes read.
    """
    out = network.taps(images, [layer])[layer]
    if out.ndim == 4:
        out = F.adaptive_avg_pool2d(out, tap_pool)
    return out.flatten(1).float()


def _labelled(dataset: Any) -> np.ndarray:
    return np.flatnonzero(torch.as_tensor(dataset.labels).numpy() >= 0)


def _images(dataset: Any, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return to_float(dataset.get_batch(torch.from_numpy(idx)).to(device))


@torch.no_grad()
def _crop_accuracy(network: nn.Module, mlp: nn.Module, dataset: Any, index: np.ndarray, *,
                   size: int, crops: int, layer: str, tap_pool: int, batch_size: int,
                   device: torch.device, progress: ProbeProgress, crop_norm: str = "each") -> float:
    """Accuracy of the summed outputs of each image's crops, one pass over ``index``.

    ``crop_norm='joint'``, where the network's preprocessor standardises each image
    (``normalize``), standardises each image's crops together instead (:func:`standardise_jointly`).
    """
    if len(index) == 0:
        return 0.0
    joint = crop_norm == "joint" and bool(getattr(network.preprocess, "normalize", False))
    mlp.eval()
    labels = torch.as_tensor(dataset.labels)
    correct = 0
    per_batch = max(1, batch_size // crops)  # about batch_size crops per forward pass
    for start in range(0, len(index), per_batch):
        idx = index[start:start + per_batch]
        views = eval_crops(_images(dataset, idx, device), size, crops)
        if joint:
            with _standardised_here(network.preprocess):
                features = frozen_features(network, standardise_jointly(views).flatten(0, 1),
                                           layer, tap_pool)
        else:
            features = frozen_features(network, views.flatten(0, 1), layer, tap_pool)
        logits = mlp(features)
        predicted = logits.view(len(idx), crops, -1).sum(dim=1).argmax(dim=1).cpu()
        correct += int((predicted == labels[torch.from_numpy(idx)]).sum())
        progress.tick()
    return correct / len(index)


def transfer_probe(network: nn.Module, train_set: Any, test_set: Any, *, layer: str = "last",
                   tap_pool: int = 2, epochs: int = 100, lr: float = 0.1, momentum: float = 0.9,
                   weight_decay: float = 1e-8, gamma: float = 0.3,
                   decay_start: int = DECAY_START, dropout: float = 0.5, hidden: int = 4096,
                   batch_size: int = 256, crops: int = 10, crop_size: int | None = None,
                   crop_fraction: float = AUTHORS_CROP_FRACTION, val_fraction: float = 0.0,
                   init: str = "default", crop_norm: str = "each", seed: int = 0,
                   device: torch.device | str = "cpu",
                   progress: ProbeProgress = QUIET) -> ProbeResult:
    """The authors' transfer protocol (test.lua, see the module's notes); returns its result.

    ``network`` (a natkit Network on ``device``: ``preprocess``, ``taps``) stays frozen: it runs in
    eval mode without gradients, and its mode is restored at the end. The images are
    read with ``dataset.get_batch`` (float in [0, 1] or uint8) a batch at a time, every
    epoch, so memory does not grow with the data. Images with a negative label are
    left out. The test split is read once, after the last epoch.

    ``crop_size`` None takes :func:`crop_side`. ``crops`` is 10 (the authors) or 1 (the
    centre crop, their ``-testsinglecrop 1``). ``val_fraction`` > 0 holds a stratified
    part of the training split out of training and reports the ten-crop accuracy there
    as ``val_accuracy`` (else ``nan``: the protocol chooses nothing on validation).
    ``init`` draws the MLP (``default`` or ``torch7``, see :func:`transfer_mlp`);
    ``crop_norm`` (``each`` or ``joint``) standardises the test crops of an image alone or
    together where the network's preprocessor standardises images (see :func:`_crop_accuracy`).
    ``seed`` fixes the MLP's initialisation, the order, the crops and the dropout, without
    touching the global random state. ``progress`` advances by one unit per epoch
    (``epochs`` in all) and ticks at every batch, the final test's included.
    """
    if crops not in (1, 10):
        raise ValueError(f"crops must be 1 or 10, got {crops}")
    if epochs < 1 or batch_size < 2 or hidden < 1:
        raise ValueError(f"epochs, batch_size and hidden must be >= 1, >= 2 and >= 1, got "
                         f"{epochs}, {batch_size} and {hidden}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if init not in INITS or crop_norm not in CROP_NORMS:
        raise ValueError(f"init must be one of {', '.join(INITS)} and crop_norm one of "
                         f"{', '.join(CROP_NORMS)}, got '{init}' and '{crop_norm}'")
    device = torch.device(device)
    train_index, test_index = _labelled(train_set), _labelled(test_set)
    if len(train_index) < 2:
        raise ValueError(f"the transfer probe needs at least 2 labelled training images, "
                         f"got {len(train_index)}")
    all_labels = torch.as_tensor(train_set.labels)
    val_index = np.zeros(0, np.int64)
    if val_fraction > 0:
        fit_pos, val_pos = stratified_split(all_labels[train_index].numpy(), val_fraction, seed)
        train_index, val_index = train_index[fit_pos], train_index[val_pos]
    size = crop_size if crop_size is not None else crop_side(network, train_set.image_size,
                                                             crop_fraction)
    classes = int(all_labels[torch.from_numpy(train_index)].max()) + 1
    common = {"size": size, "crops": crops, "layer": layer, "tap_pool": tap_pool,
              "batch_size": batch_size, "device": device, "progress": progress,
              "crop_norm": crop_norm}
    g = torch.Generator().manual_seed(seed)  # order and crops, drawn on the CPU
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    was_training = network.training
    network.eval()
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)  # the MLP's initialisation and its dropout
            first = random_crop(_images(train_set, train_index[:1], device), g, size)
            d = frozen_features(network, first, layer, tap_pool).shape[1]
            mlp = transfer_mlp(d, classes, hidden, dropout, init).to(device)
            optimizer = AuthorsSGD(mlp, momentum, weight_decay)
            n = len(train_index)
            per_epoch = max(1, n // batch_size)  # skip-last, unless one batch is all there is
            progress.step(f"training the MLP on {size}x{size} crops, {epochs} epochs")
            train_accuracy = 0.0
            for epoch in range(epochs):
                step_lr = transfer_lr(epoch, lr, gamma, decay_start)
                mlp.train()
                order = train_index[torch.randperm(n, generator=g).numpy()]
                correct = seen = 0
                for b in range(per_epoch):
                    idx = order[b * batch_size:(b + 1) * batch_size]
                    y = all_labels[torch.from_numpy(idx)].to(device)
                    x = random_crop(_images(train_set, idx, device), g, size)
                    logits = mlp(frozen_features(network, x, layer, tap_pool))
                    loss = F.cross_entropy(logits, y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step(step_lr)
                    correct += int((logits.detach().argmax(dim=1) == y).sum())
                    seen += len(idx)
                    progress.tick()
                train_accuracy = correct / seen
                progress.advance(1)
        val_accuracy = math.nan
        if len(val_index):
            progress.step(f"{crops}-crop accuracy on the validation split")
            val_accuracy = _crop_accuracy(network, mlp, train_set, val_index, **common)
        progress.step(f"{crops}-crop test")
        accuracy = _crop_accuracy(network, mlp, test_set, test_index, **common)
    finally:
        network.train(was_training)
    setting = {"epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
               "gamma": gamma, "decay_start": decay_start, "dropout": dropout, "hidden": hidden,
               "batch_size": batch_size, "crops": crops, "crop_size": size, "init": init,
               "crop_norm": crop_norm}
    return ProbeResult(accuracy, setting, val_accuracy, train_accuracy)
