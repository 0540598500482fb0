"""Plugins: discovery through entry points, the hooks, provenance, and isolation of failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import natkit
from natkit import hookspecs, plugins
from natkit.cli import app
from natkit.kinds import TABLE
from natkit.plugins import PluginHost, PluginWarning

GOOD_PLUGIN = '''
import torch
import natkit


class ReverseSolver:
    """Assigns row i to column b-1-i (a valid, silly permutation)."""

    def __call__(self, cost):
        return torch.arange(cost.shape[0] - 1, -1, -1, device=cost.device)


@natkit.hookimpl
def register_solvers(register):
    register("reverse", ReverseSolver, help="Row i takes column b-1-i.")


@natkit.hookimpl
def on_run_start(run):
    run.dir.joinpath("plugin-saw-start").write_text("yes")
'''

BROKEN_ON_IMPORT = "raise ImportError('this plugin needs a library that is not installed')\n"

BROKEN_HOOK = '''
import natkit


@natkit.hookimpl
def register_targets(register):
    register("half", object)
    raise RuntimeError("registration blew up")
'''


def install_fake_distribution(root: Path, dist: str, modules: dict[str, str]) -> None:
    """Write modules and a .dist-info with ``natkit`` entry points, as pip would."""
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"  # pip's name for the folder
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{name} = {name}" for name in modules)
    (info / "entry_points.txt").write_text(f"[natkit]\n{lines}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    return tmp_path


def test_entry_point_plugin_adds_a_solver_with_its_provenance(site):
    install_fake_distribution(site, "natkit-reverse", {"natkit_reverse": GOOD_PLUGIN})
    host = PluginHost()
    solvers = host.registries()["solver"]
    entry, _ = solvers.lookup("reverse")
    assert entry.plugin == "natkit_reverse"
    assert entry.help == "Row i takes column b-1-i."
    perm = solvers.create("reverse")(torch.zeros(4, 4))
    assert perm.tolist() == [3, 2, 1, 0]
    info = {p.name: p for p in host.plugins()}
    assert info["natkit_reverse"].distribution == "natkit-reverse"
    assert info["natkit_reverse"].version == "1.2.3"


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_work(site):
    install_fake_distribution(site, "natkit-mixed", {"natkit_broken": BROKEN_ON_IMPORT,
                                                     "natkit_reverse": GOOD_PLUGIN})
    with pytest.warns(PluginWarning, match="natkit plugin 'natkit_broken' failed to load"):
        host = PluginHost()
    assert "reverse" in host.registries()["solver"]
    assert "hungarian" in host.registries()["solver"]
    broken = {p.name: p for p in host.plugins()}["natkit_broken"]
    assert "ImportError" in broken.error and "not installed" in broken.error


@pytest.mark.parametrize("debug", ["1", ""])
def test_natkit_debug_shows_where_a_plugin_failed(site, monkeypatch, capsys, debug):
    install_fake_distribution(site, "natkit-mixed", {"natkit_broken": BROKEN_ON_IMPORT})
    monkeypatch.setenv(plugins.DEBUG_ENV, debug)
    with pytest.warns(PluginWarning) as caught:
        PluginHost()
    message = str(caught[0].message)
    where = f"(at {site / 'natkit_broken.py'}:1)"
    assert (where in message) == bool(debug)
    assert ("Traceback" in capsys.readouterr().err) == bool(debug)


def test_a_plugin_whose_hook_raises_is_left_out_of_that_registry(site):
    install_fake_distribution(site, "natkit-bad-hook", {"natkit_bad_hook": BROKEN_HOOK})
    host = PluginHost()
    with pytest.warns(PluginWarning, match=r"'natkit_bad_hook' failed in its register_targets hook: "
                                           r"RuntimeError: registration blew up; continuing"):
        targets = host.registries()["targets"]
    assert "half" not in targets  # all or nothing: its first registration is undone
    assert {"basis", "sphere"} <= set(targets.names())
    assert all(e.plugin != "natkit_bad_hook" for e in targets.entries())
    assert "natkit_bad_hook" in {p.name for p in host.plugins() if p.error}


def test_registries_fill_one_kind_at_a_time(host):
    calls = []

    class Counting:
        @natkit.hookimpl
        def register_backbones(self, register):
            calls.append("backbones")

    host.register(Counting(), name="counting")
    host.registry("solver")
    assert calls == []  # listing solvers runs no backbone hook (and imports no timm)
    host.registry("backbone")
    assert calls == ["backbones"]


def test_autoloading_can_be_turned_off(site, monkeypatch):
    install_fake_distribution(site, "natkit-reverse", {"natkit_reverse": GOOD_PLUGIN})
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    assert "reverse" not in PluginHost().registries()["solver"]


def test_builtins_use_the_same_hooks_as_any_plugin(host):
    impls = host.pm.hook.register_solvers.get_hookimpls()
    assert [i.plugin_name for i in impls] == ["natkit"]
    host.unregister("natkit")
    assert host.registries()["solver"].names() == []


class InlinePlugin:
    """A plugin object registered at run time (no packaging needed)."""

    @natkit.hookimpl
    def register_preprocessors(self, register):
        from natkit.preprocess.clean import Clean

        register("identity", Clean)


def test_a_registered_object_shows_in_list_components_and_natkit_list(host):
    host.register(InlinePlugin(), name="inline")
    assert "identity" in natkit.list_components("preprocess")
    result = CliRunner().invoke(app, ["list", "preprocessors"])
    assert result.exit_code == 0, result.output
    assert "identity" in result.output and "inline" in result.output


def test_natkit_plugins_lists_failures_by_name(site):
    install_fake_distribution(site, "natkit-mixed", {"natkit_broken": BROKEN_ON_IMPORT})
    with pytest.warns(PluginWarning):
        old = plugins.reset_host(PluginHost())
    try:
        result = CliRunner().invoke(app, ["plugins"])
    finally:
        plugins.reset_host(old)
    assert result.exit_code == 0
    assert "natkit_broken" in result.output and "error" in result.output
    assert "natkit " in result.output  # the built-ins are listed too


COMMAND_PLUGIN = '''
import natkit


@natkit.hookimpl
def register_commands(cli):
    @cli.command()
    def hello(name: str = "world") -> None:
        """Say hello."""
        print(f"hello {name} from a plugin")
'''

BROKEN_COMMANDS = '''
import natkit


@natkit.hookimpl
def register_commands(cli):
    raise RuntimeError("no commands today")
'''


def test_a_plugin_adds_a_command_to_the_natkit_cli(site):
    install_fake_distribution(site, "natkit-hello", {"natkit_hello": COMMAND_PLUGIN})
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(plugins.AUTOLOAD_ENV, None)
    done = subprocess.run([sys.executable, "-m", "natkit", "hello", "--name", "NAT"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello NAT from a plugin"


def test_a_plugin_whose_commands_fail_is_reported_and_the_others_stay(site):
    install_fake_distribution(site, "natkit-cmds", {"natkit_broken_cmds": BROKEN_COMMANDS,
                                                    "natkit_hello": COMMAND_PLUGIN})
    cli = typer.Typer()

    @cli.command()
    def own() -> None:
        """natkit's own command."""

    host = PluginHost()
    with pytest.warns(PluginWarning, match=r"'natkit_broken_cmds' failed in its register_commands "
                                           r"hook: RuntimeError: no commands today"):
        host.add_commands(cli)
    result = CliRunner().invoke(cli, ["hello"])
    assert result.exit_code == 0 and "hello world from a plugin" in result.output
    assert CliRunner().invoke(cli, ["own"]).exit_code == 0


@pytest.mark.parametrize("kind", TABLE, ids=lambda k: k.name)
def test_each_kind_of_the_table_gets_its_hook_factory_and_run_option(kind, host):
    assert getattr(natkit, f"create_{kind.name}").__name__ == f"create_{kind.name}"
    assert f"create_{kind.name}" in natkit.__all__
    assert kind.hook in {name for name in dir(host.hook) if name.startswith("register_")}
    assert getattr(hookspecs, kind.hook).__doc__ == kind.hook_doc
    result = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert f"--{kind.section} " in result.output and f"natkit list {kind.plural}" in result.output
