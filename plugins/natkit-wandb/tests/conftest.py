"""W&B kept off the network and out of the home directory, and its offline run files read back."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

WANDB_ENV = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_PROJECT",
             "WANDB_ENTITY", "WANDB_NAME", "WANDB_RUN_ID", "WANDB_DIR", "WANDB_RESUME")


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No credentials, wandb's own files under tmp_path, and a server no request could reach.

    wandb reads its environment once a process (its setup); it is torn down after each test
    so that the next test's environment counts.
    """
    for name in WANDB_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()
    yield
    wandb.teardown()


@dataclass
class Session:
    """One offline run folder (RUN_DIR/wandb/offline-run-TIME-ID), as its .wandb file records it."""

    folder: Path
    run: Any = None  # the Run record: id, project, name, config
    history: dict[int, dict[str, Any]] = field(default_factory=dict)  # _step -> row
    summary: dict[str, Any] = field(default_factory=dict)  # the final summary, top-level keys
    exit_code: int | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The run's config as logged, without wandb's own ``_wandb`` entry."""
        items = {u.key: json.loads(u.value_json) for u in self.run.config.update}
        return {k: v for k, v in items.items() if k != "_wandb"}


def records(path: Path) -> Iterator[Any]:
    """The Record protos of a .wandb file: a LevelDB log (32 KiB blocks of 7-byte-headed chunks)
    after wandb's 7-byte header (":W&B", a magic number, a version)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, chunks = 32768, 7, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding
            continue
        chunks.append(chunk)
        if kind in (1, 4):  # a whole record, or the last chunk of one
            yield wandb_internal_pb2.Record.FromString(b"".join(chunks))
            chunks = []


def put(target: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``target[k1][k2]...`` (a key may hold '/': W&B nests by key lists, not by name)."""
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def read_session(folder: Path) -> Session:
    [path] = folder.glob("*.wandb")
    session = Session(folder)
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            session.run = record.run
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                put(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            session.history[row["_step"]] = row
        elif kind == "summary":
            for update in record.summary.update:
                put(session.summary, list(update.nested_key) or [update.key],
                    json.loads(update.value_json))
        elif kind == "exit":
            session.exit_code = record.exit.exit_code
    return session


@pytest.fixture
def wandb_sessions() -> Any:
    """``wandb_sessions(run_dir)``: the run's offline W&B sessions, oldest first."""

    def read(run_dir: Path) -> list[Session]:
        return [read_session(f) for f in sorted((Path(run_dir) / "wandb").glob("offline-run-*"))]

    return read
