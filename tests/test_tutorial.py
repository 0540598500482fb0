"""docs/tutorial.md, run: its files written, its commands run, its printed output matched.

The commands run as the page gives them, on a smaller folder and with fewer epochs (the
options below are appended, and later options win). Each line of output the page shows
must appear in the real output, in the page's order, each printed line standing for one
shown line, with every number free (the run is shorter) and runs of spaces collapsed; a
line '...' on the page stands for lines it leaves out.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "tutorial.md"

# what each command gets appended in the test: a smaller, quicker version of the page's
QUICKER = {
    "make_photos.py": ["--per-class", "50"],
    # 6 epochs: reassignment in the 1st and the 4th, as many lines of each kind as the page shows
    "natkit run": ["--epochs", "6", "--set", "data.image_size=32", "--set", "eval.mlp_epochs=2",
                   "--set", "eval.linear_iterations=20", "--set", "eval.knn_k=[5]"],
}
BLOCK = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```', re.M | re.S)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
PHOTO = re.compile(r"photos/(\w+)/\1-\d+\.jpg")  # a path of the folder the page makes


def _blocks() -> list[tuple[str, str | None, str]]:
    return [(m[1], m[2], m[3]) for m in BLOCK.finditer(PAGE.read_text())]


def _sessions() -> list[tuple[str, list[str]]]:
    """Every ``$ command`` of the page's console blocks, with the output shown under it."""
    sessions: list[tuple[str, list[str]]] = []
    for language, _, text in _blocks():
        if language != "console":
            continue
        for line in text.splitlines():
            if line.startswith("$ "):
                sessions.append((line[2:], []))
            elif sessions:
                sessions[-1][1].append(line)
    return sessions


def _pattern(shown: str) -> re.Pattern[str]:
    if PHOTO.fullmatch(shown.strip()):
        # a neighbour of the page's 15-epoch network: the test's shorter run finds others
        return PHOTO
    parts = NUMBER.split(" ".join(shown.split()))
    return re.compile(r"\d+(?:[.,]\d+)*".join(re.escape(part) for part in parts))


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "natkit":
        argv = [sys.executable, "-m", "natkit", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    for key, extra in QUICKER.items():
        if key in command:
            argv += extra
    return argv


def test_the_page_has_the_steps_this_test_runs():
    commands = [command for command, _ in _sessions()]
    assert any("make_photos.py" in c for c in commands)
    assert any(c.startswith("natkit run --config photos.yaml") for c in commands)
    assert any(c.startswith("natkit export") for c in commands)
    assert "python use.py" in commands
    assert {title for _, title, _ in _blocks() if title} == {"photos.yaml", "use.py"}


def test_the_tutorial_s_commands_print_what_the_page_shows(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "examples").symlink_to(REPO / "docs" / "examples")
    for _, title, text in _blocks():
        if title:
            (tmp_path / title).write_text(text)
    # natkit alone, as the page installs it: no other installed plugin logs or prints
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    for command, shown in _sessions():
        if command.startswith(("python3 -m venv", "pip ")):
            continue  # the install: this environment has natkit already
        # stdout and stderr in one stream, in the order a terminal shows them
        done = subprocess.run(_argv(command), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout}"
        printed = [" ".join(line.split()) for line in done.stdout.splitlines()]
        # in order, each printed line matched once: five neighbours shown need five printed
        unread = iter(printed)
        for line in shown:
            if line.strip() == "...":
                continue
            pattern = _pattern(line)
            assert any(pattern.fullmatch(real) for real in unread), \
                f"{command}: the page shows\n  {line}\nin this order, but it printed\n  " + \
                "\n  ".join(printed)
        for real in printed:  # the neighbours printed are photos of the folder
            if PHOTO.fullmatch(real):
                assert (tmp_path / real).is_file(), real
    # what the page says the run leaves behind
    for name in ("neighbours.png", "filters.png", "loss.png", "results.json"):
        assert (tmp_path / "runs" / "photos" / name).is_file()
