"""mkdocs hooks: reference pages generated from the code at build time, so they cannot drift.

Markers in the Markdown sources are replaced when the site is built:
``<!-- cli-reference -->`` (every command and option of the typer app),
``<!-- config-reference -->`` (every config key with its default and meaning, and
every registered component's options), ``<!-- benchmark-results -->``
(benchmarks/RESULTS.md, whose figures are copied into the site) and
``<!-- gpu-results -->`` (the speed suite's tables measured on lent GPUs) and
``<!-- distributed-results -->`` (torchrun ranks against one process) and
``<!-- eval-memory-results -->`` (the evaluation's peak memory against n) and
``<!-- register-hooks -->`` (a ``register_*`` hook per kind of component in natkit.kinds).
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import os
import re
import typing
from pathlib import Path

from mkdocs.structure.files import File

# the site documents natkit itself, not whatever plugins happen to be installed beside it
os.environ.setdefault("NATKIT_DISABLE_PLUGIN_AUTOLOAD", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
FIGURES = ROOT / "benchmarks" / "results" / "tiny"
GPU_RESULTS = ROOT / "benchmarks" / "results"


def _type_name(hint: object) -> str:
    text = str(hint).replace("typing.", "")
    return getattr(hint, "__name__", text) if not typing.get_args(hint) else text


def _text(text: str) -> str:
    """Help text for a Markdown table: ``<name>`` shown as typed (not swallowed as an HTML tag)."""
    parts = text.split("`")
    parts[::2] = [html.escape(part, quote=False) for part in parts[::2]]  # outside code spans
    return "`".join(parts).replace("|", "\\|")


def _value(value: object) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):
        return f"`{value!r}`"
    return f"`{value}`".replace("None", "null").replace("True", "true").replace("False", "false")


def cli_reference() -> str:
    """Markdown for every command and option of ``natkit``."""
    import typer

    from natkit.cli import app

    group = typer.main.get_command(app)
    lines = []
    for name, command in sorted(group.commands.items()):
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        usage = " ".join(["[OPTIONS]", *((p.metavar or p.name.upper()) + ("..." if p.nargs == -1
                                                                          else "")
                                          for p in arguments)])
        lines += [f"## `natkit {name}`", "", _text(inspect.cleandoc(command.help or "")), "",
                  "```text", f"natkit {name} {usage}", "```", ""]
        rows = []
        for param in command.params:
            if param.param_type_name == "argument":
                rows.append((f"`{param.metavar or param.name.upper()}`", "(argument)",
                             _text(param.help or "")))
            elif not param.hidden and "--help" not in param.opts:
                flags = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
                default = "" if param.default in (None, ()) else _value(param.default)
                rows.append((flags, default, _text(param.help or "")))
        if rows:
            lines += ["| option | default | meaning |", "|---|---|---|"]
            lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
            lines.append("")
    return "\n".join(lines)


def config_reference() -> str:
    """Markdown for every config key, then every registered component's options."""
    from natkit import config as cfg
    from natkit.plugins import registry
    from natkit.registry import CONTEXT_PARAMS

    lines = ["## Run settings", ""]
    root = cfg.Config()
    hints = typing.get_type_hints(cfg.Config)
    rows = []
    for f in dataclasses.fields(cfg.Config):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        rows.append((f.name, _type_name(hints[f.name]), getattr(root, f.name),
                     f.metadata.get("help", "")))
    lines += _table(rows)
    for f in dataclasses.fields(cfg.Config):
        section = hints[f.name]
        if not dataclasses.is_dataclass(section):
            continue
        lines += [f"## `{f.name}`", "", inspect.getdoc(section) or "", ""]
        sub_hints = typing.get_type_hints(section)
        default = getattr(root, f.name)
        lines += _table([(f"{f.name}.{g.name}", _type_name(sub_hints[g.name]),
                          getattr(default, g.name), g.metadata.get("help", ""))
                         for g in dataclasses.fields(section)])
    lines += ["## Component sections", "",
              "`method`, `data`, `preprocess`, `backbone`, `targets` and `solver` each hold a "
              "`name` and "
              "that component's options; the defaults of the options live in the component's "
              "factory and are written into the run's `config.yaml`. Options that natkit sets "
              "itself (such as a backbone's input channels) are not listed.", ""]
    for section, kind in cfg.COMPONENT_SECTIONS.items():
        default = getattr(root, section)
        lines += [f"### `{section}` ({kind})", "", f"Default: {_value(default)}", ""]
        reg = registry(kind)
        for entry in reg.entries():
            name = entry.display_name
            lines += [f"**`{name}`** ({entry.plugin}): {_text(entry.help)}", ""]
            lookup = name.replace("<name>", "resnet18") if entry.prefix else name
            params = reg.parameters(lookup)
            hints_f = reg.type_hints(lookup)
            meaning = _args_section(entry.factory)
            skip = CONTEXT_PARAMS.get(kind, frozenset())
            rows = [(f"{section}.{p}", _type_name(hints_f.get(p, "")), param.default,
                     meaning.get(p, ""))
                    for p, param in params.items() if p not in skip]
            if rows:
                lines += _table(rows)
            if reg.accepts_extra(lookup):
                lines += ["Other options are passed through to the underlying library.", ""]
    return "\n".join(lines)


def _args_section(factory: object) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring, as {name: text}."""
    # a class registered as its own factory documents its options on __init__
    target = factory.__init__ if inspect.isclass(factory) else factory
    doc = inspect.getdoc(target) or ""
    out: dict[str, str] = {}
    inside, current = False, None
    for line in doc.splitlines():
        if line.strip() == "Args:":
            inside = True
            continue
        if inside:
            if line and not line.startswith(" "):
                break
            name, sep, text = line.strip().partition(": ")
            if sep and line.startswith("    ") and not line.startswith("     "):
                current = name
                out[name] = text
            elif current and line.strip():
                out[current] += " " + line.strip()
    return out


def _table(rows: list[tuple], with_help: bool = True) -> list[str]:
    head = "| key | type | default |" + (" meaning |" if with_help else "")
    sep = "|---|---|---|" + ("---|" if with_help else "")
    out = [head, sep]
    for key, kind, default, help_text in rows:
        cells = [f"`{key}`", f"`{kind}`".replace("|", "\\|"), _value(default).replace("|", "\\|")]
        if with_help:
            cells.append(_text(help_text))
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def benchmark_results() -> str:
    """benchmarks/RESULTS.md without its title, with figure links pointing into the site."""
    text = RESULTS.read_text()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    body = re.sub(r"\]\(results/(gpu-[\w.-]+)/speed\.md\)", r"](solvers.md#\1)", body)
    return body.replace("](results/tiny/", "](img/benchmarks/")


def gpu_results() -> str:
    """Every GPU speed table under benchmarks/results/gpu-*/, under a heading of its own, with its figure."""
    parts = []
    for md in sorted(GPU_RESULTS.glob("gpu-*/speed.md")):
        name = md.parent.name
        text = md.read_text().replace("### Speed: the assignment solvers and the cost of NAT", "")
        figure = f"![{name} solver speed](img/benchmarks/{name}-speed.png)" \
            if (md.parent / "speed.png").is_file() else ""
        parts.append(f"### {name}\n\n{text.strip()}\n\n{figure}\n")
    return "\n".join(parts) or "No GPU measurements yet: run `bash benchmarks/gpu.sh` on one."


def distributed_results() -> str:
    """The distributed row of the speed suite, as last measured (benchmarks/results/*/distributed.md)."""
    parts = [md.read_text().replace("#### ", "### ", 1)
             for md in sorted(GPU_RESULTS.glob("*/distributed.md"))]
    return "\n".join(parts) or "Not measured yet: run `python -m benchmarks.distributed`."


def eval_memory_results() -> str:
    """Peak memory of the evaluation against n, as last measured (benchmarks/results/tiny/eval_memory.md)."""
    md = FIGURES / "eval_memory.md"
    return (md.read_text().replace("### ", "#### ", 1) if md.is_file()
            else "Not measured yet: run `python -m benchmarks.eval_memory`.")


_MATH = re.compile(r"(```.*?```|`[^`\n]*`)|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.S)


def render_math(markdown: str) -> str:
    """TeX between \\( \\) and \\[ \\] as MathML, which browsers draw with no script or network."""
    from latex2mathml.converter import convert

    def replace(match: re.Match) -> str:
        code, display, inline = match.groups()
        if code is not None:
            return code  # TeX-like text in code stays as typed
        if display is not None:
            return "\n\n" + convert(display.strip(), display="block") + "\n\n"
        return convert(inline.strip())

    return _MATH.sub(replace, markdown)


def register_hooks() -> str:
    """The plugin hooks' table rows for the ``register_*`` hooks, one per kind in natkit.kinds."""
    from natkit.kinds import TABLE

    first, *rest = TABLE
    rows = [f"| `{first.hook}(register)` | a `register(name, factory, *, help=None, "
            f"prefix=False)` callback | add {first.what}: `{first.factory}` |"]
    rows += [f"| `{kind.hook}(register)` | same | add {kind.what}: `{kind.factory}` |"
             for kind in rest]
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the reference markers with generated Markdown, and TeX with MathML."""
    markdown = render_math(markdown)
    for marker, make in (("<!-- cli-reference -->", cli_reference),
                         ("<!-- config-reference -->", config_reference),
                         ("<!-- benchmark-results -->", benchmark_results),
                         ("<!-- gpu-results -->", gpu_results),
                         ("<!-- distributed-results -->", distributed_results),
                         ("<!-- eval-memory-results -->", eval_memory_results),
                         ("<!-- register-hooks -->", register_hooks)):
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown


def on_files(files, config):
    """Add the benchmark figures to the site."""
    if FIGURES.is_dir():
        for png in sorted(FIGURES.glob("*.png")):
            files.append(File.generated(config, f"img/benchmarks/{png.name}",
                                        abs_src_path=str(png)))
    for png in sorted(GPU_RESULTS.glob("gpu-*/speed.png")):
        files.append(File.generated(config, f"img/benchmarks/{png.parent.name}-speed.png",
                                    abs_src_path=str(png)))
    return files
