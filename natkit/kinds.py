"""The component kinds natkit knows, in one table.

Everything that differs between kinds is a column here: the config section
that holds a kind's name and options, the plugin hook that registers it (and
what its factories look like), the arguments natkit passes itself, the options
every component of the kind shares, and the words `natkit list` accepts. The
registries, the plugin host and its ``register_*`` hookspecs, the
``natkit.create_*`` functions, the config and the ``natkit run`` options are all
made from this table: adding a kind means a row here, its config section in
:mod:`natkit.schema`, and the built-in components it starts with (see
docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One kind of component: how it is configured, registered and listed."""

    name: str  # the registry's name, e.g. "solver"
    plural: str  # for titles and `natkit list solvers`
    section: str  # the config section holding its name and options
    hook: str  # the plugin hook that registers it
    # arguments natkit passes when it builds one for a run; a config may not set them
    context: frozenset[str] = frozenset()
    # options with one meaning across the kind: kept when a config switches component
    shared: frozenset[str] = frozenset()
    aliases: tuple[str, ...] = ()  # other words `natkit list` accepts
    what: str = ""  # what its components are, for help texts: "assignment solvers"
    factory: str = ""  # the signature its factories have, for the hook's documentation
    examples: tuple[str, ...] = ()  # built-in names, for the `natkit run` option's help

    @property
    def option_help(self) -> str:
        """The help text of ``natkit run --<section>``."""
        return f"Which of the {self.what}: {', '.join(self.examples)}, ... (natkit list {self.plural})."

    @property
    def hook_doc(self) -> str:
        """The docstring of the kind's ``register_*`` hook."""
        return f"Add {self.what}: ``{self.factory}``."

    @property
    def words(self) -> tuple[str, ...]:
        """Every word that names this kind: singular, plural and aliases."""
        return tuple(dict.fromkeys((self.name, self.plural, *self.aliases)))


TABLE: tuple[Kind, ...] = (
    Kind("method", "methods", "method", "register_methods", context=frozenset({"context"}),
         what="training methods", factory="factory(*, context: MethodContext, **options) -> Method",
         examples=("nat", "supervised")),
    Kind("backbone", "backbones", "backbone", "register_backbones",
         context=frozenset({"in_chans", "image_size"}), what="backbones",
         factory="factory(*, in_chans, image_size, **options) -> nn.Module",
         examples=("alexnet", "timm:resnet18")),
    Kind("targets", "targets", "targets", "register_targets",
         shared=frozenset({"dim", "seed"}), aliases=("target",), what="target distributions",
         factory="factory(*, dim, seed, **options) -> Targets", examples=("sphere", "basis")),
    Kind("solver", "solvers", "solver", "register_solvers", what="assignment solvers",
         factory="factory(**options) -> callable(cost[b, b]) -> LongTensor[b]",
         examples=("hungarian", "emd", "sinkhorn", "greedy")),
    Kind("preprocess", "preprocessors", "preprocess", "register_preprocessors",
         context=frozenset({"in_channels"}), aliases=("preprocessor",), what="preprocessors",
         factory="factory(*, in_channels, **options) -> nn.Module with out_channels",
         examples=("sobel", "clean", "highpass")),
    Kind("dataset", "datasets", "data", "register_datasets", context=frozenset({"split"}),
         aliases=("data",), what="datasets",
         factory="factory(*, split, **options) -> Dataset of (image, index, label)",
         examples=("shapes", "digits", "imagefolder")),
)

BY_NAME: dict[str, Kind] = {kind.name: kind for kind in TABLE}
BY_WORD: dict[str, Kind] = {word: kind for kind in TABLE for word in kind.words}
