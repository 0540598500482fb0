"""torch.hub entry points of a natkit clone: ``torch.hub.load(clone, "encoder", path, source="local")``.

natkit publishes no weights: the entry points rebuild what ``natkit export`` wrote
(``encoder``) or an untrained backbone by name (``backbone``). They need
natkit's dependencies installed, not natkit itself.
"""

dependencies = ["torch", "torchvision", "timm", "scipy", "pluggy", "yaml", "safetensors"]


def encoder(path, device="cpu"):
    """The RGB encoder in ``path`` (a .rgb.safetensors file natkit export wrote), in eval mode."""
    from natkit.pretrained import load_pretrained

    return load_pretrained(path, device=device)


def backbone(name, **options):
    """An untrained backbone by natkit's name, e.g. ``backbone("alexnet", in_chans=2)``."""
    import natkit

    return natkit.create_backbone(name, **options)
