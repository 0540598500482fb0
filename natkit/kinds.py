"""The component kinds natkit knows, in one table.

Everything that differs between kinds is a column here: the config section
that holds a kind's name and options, the plugin hook that registers it, the
arguments natkit passes itself, the options every component of the kind
shares, and the words `natkit list` accepts. The registries, the plugin host,
the config and the CLI read this table; adding a kind means adding a row here
and its ``register_*`` hook in :mod:`natkit.hookspecs`.
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

    @property
    def words(self) -> tuple[str, ...]:
        """Every word that names this kind: singular, plural and aliases."""
        return tuple(dict.fromkeys((self.name, self.plural, *self.aliases)))


TABLE: tuple[Kind, ...] = (
    Kind("method", "methods", "method", "register_methods", context=frozenset({"context"})),
    Kind("backbone", "backbones", "backbone", "register_backbones",
         context=frozenset({"in_chans", "image_size"})),
    Kind("targets", "targets", "targets", "register_targets",
         shared=frozenset({"dim", "seed"}), aliases=("target",)),
    Kind("solver", "solvers", "solver", "register_solvers"),
    Kind("preprocess", "preprocessors", "preprocess", "register_preprocessors",
         context=frozenset({"in_channels"}), aliases=("preprocessor",)),
    Kind("dataset", "datasets", "data", "register_datasets", context=frozenset({"split"}),
         aliases=("data",)),
)

BY_NAME: dict[str, Kind] = {kind.name: kind for kind in TABLE}
BY_WORD: dict[str, Kind] = {word: kind for kind in TABLE for word in kind.words}
