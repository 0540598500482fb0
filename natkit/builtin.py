"""The built-in components, registered through the same hooks as any plugin.

Each hook imports its modules when called, so ``import natkit`` stays light
and one component's heavy dependency is paid only when its kind is listed.
"""

from __future__ import annotations

from typing import Any

from natkit.hookspecs import hookimpl


@hookimpl
def register_methods(register: Any) -> None:
    from natkit.methods import nat, supervised

    register("nat", nat.NoiseAsTargets)
    register("supervised", supervised.Supervised)


@hookimpl
def register_backbones(register: Any) -> None:
    from natkit.backbones import alexnet, timm_backbone

    register("alexnet", alexnet.create)
    register("timm", timm_backbone.create, prefix=True)


@hookimpl
def register_targets(register: Any) -> None:
    from natkit.targets import basis, sphere

    register("sphere", sphere.create)
    register("basis", basis.create)


@hookimpl
def register_solvers(register: Any) -> None:
    from natkit.solvers import auction, emd, greedy, hungarian, sinkhorn

    register("hungarian", hungarian.create)
    register("auction", auction.create)
    register("emd", emd.create)
    register("sinkhorn", sinkhorn.create)
    register("greedy", greedy.create)


@hookimpl
def register_preprocessors(register: Any) -> None:
    from natkit.preprocess import clean, highpass, sobel

    register("clean", clean.create)
    register("sobel", sobel.create)
    register("highpass", highpass.create)


@hookimpl
def register_datasets(register: Any) -> None:
    from natkit.datasets import digits, imagefolder, shapes, shards, torchvision_sets

    register("shapes", shapes.create)
    register("digits", digits.create)
    register("imagefolder", imagefolder.create)
    register("shards", shards.create)
    register("cifar10", torchvision_sets.create_cifar10)
    register("stl10", torchvision_sets.create_stl10)
