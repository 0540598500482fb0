"""Image shards: an image folder written once at its training size, read through a memory map.

``natkit shards SRC OUT`` (:mod:`natkit.datasets.shard_writer`) writes each split
of an ``imagefolder`` (the same files, split, class order and labels) as one flat
file of records and an index beside it::

    OUT/shards.json          the manifest: format version, encoding, size, classes,
                             source, split settings, counts, skipped files
    OUT/train.bin            the records, back to back: each a standalone JPEG
                             (``encoding: jpeg``) or uint8 pixels [3, size, size]
    OUT/train.index.npz      offsets [n + 1], labels [n], CRC32 of each record [n],
                             source paths relative to SRC [n]
    OUT/test.bin, OUT/test.index.npz

Every image was resized once, with :func:`~natkit.datasets.images.load_image`'s
geometry (shorter side to ``size``, centre square). Reading one is a slice of the
memory-mapped file: no file is opened per image, any record is reached directly
(natkit's batches are seeded random rows), and loader workers forked from the
main process share the mapped pages. A record whose CRC32 no longer matches, or
that does not decode, gives a blank image and an
:class:`~natkit.datasets.images.ImageReadWarning`, as a broken file does in
``imagefolder``: it never stops a run.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from PIL import Image

from natkit.datasets.encoded import CACHE_LIMIT_BYTES, EncodedImages
from natkit.datasets.images import UNREADABLE, ImageReadWarning, centre_square, load_image
from natkit.errors import ConfigError, DataError, clip
from natkit.values import MAX_IMAGE_SIZE, Bounds

FORMAT = "natkit-shards"
VERSION = 1
MANIFEST = "shards.json"
ENCODINGS = ("jpeg", "raw")
SPLITS = ("train", "test")


def data_name(split: str) -> str:
    """The records file of ``split``."""
    return f"{split}.bin"


def index_name(split: str) -> str:
    """The index file of ``split``."""
    return f"{split}.index.npz"


@dataclass(frozen=True)
class Manifest:
    """What ``shards.json`` says: how the records were written, and from what."""

    encoding: Literal["jpeg", "raw"]
    size: int
    classes: list[str]
    splits: dict[str, dict[str, Any]]  # split -> {"images", "bytes", "skipped"}
    raw: dict[str, Any]  # the whole manifest, as read

    @property
    def record_bytes(self) -> int:
        """The size of one raw record (uint8 [3, size, size])."""
        return 3 * self.size * self.size


def _manifest_problem(data: Any) -> str | None:
    """What is wrong with a manifest's structure, or None when it is sound."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"not a {FORMAT} manifest"
    if data.get("version") != VERSION:
        return (f"format version {clip(data.get('version'))}; this natkit reads version "
                f"{VERSION}: write the shards again with this natkit")
    if data.get("encoding") not in ENCODINGS:
        return f"'encoding' must be one of {', '.join(ENCODINGS)}"
    size = data.get("size")
    if type(size) is not int or not 1 <= size <= MAX_IMAGE_SIZE:
        return f"'size' must be an integer from 1 to {MAX_IMAGE_SIZE}"
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' must be a non-empty list of names"
    splits = data.get("splits")
    if not isinstance(splits, dict) or any(
            s not in SPLITS or not isinstance(v, dict) or type(v.get("images")) is not int
            or type(v.get("bytes")) is not int or not isinstance(v.get("skipped", []), list)
            for s, v in splits.items()):
        return "'splits' must map train/test to their counts"
    return None


def read_manifest(root: Path) -> Manifest:
    """The manifest of the shards folder ``root`` (DataError naming data.root if not valid)."""
    path = root / MANIFEST
    if not root.is_dir():
        raise DataError(f"data.root: '{root}' is not a directory (expected shards written by "
                        "natkit shards)")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"data.root: '{root}' holds no {MANIFEST}: not a folder written by "
                        "natkit shards (or its writing did not finish)") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"data.root: '{path}' cannot be read: {type(exc).__name__}") from None
    why = _manifest_problem(data)
    if why is not None:
        raise DataError(f"data.root: '{path}': {why}")
    return Manifest(data["encoding"], data["size"], list(data["classes"]),
                    {k: dict(v) for k, v in data["splits"].items()}, data)


def _read_index(root: Path, split: str, manifest: Manifest) -> dict[str, np.ndarray]:
    """The index of ``split``, checked against the manifest and the records file."""
    path, data = root / index_name(split), root / data_name(split)
    info = manifest.splits[split]
    try:
        with np.load(path, allow_pickle=False) as npz:
            index = {key: npz[key] for key in ("offsets", "labels", "crc32", "paths")}
        size = data.stat().st_size
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"data.root: the {split} split's index or records cannot be read "
                        f"({type(exc).__name__}: {clip(exc)}); write the shards again") from None
    n, offsets = info["images"], index["offsets"]
    lengths = np.diff(offsets)
    why = None
    if not (offsets.shape == (n + 1,) and index["labels"].shape == index["crc32"].shape
            == index["paths"].shape == (n,)):
        why = f"it does not list the {n} images of the manifest"
    elif n == 0 or offsets[0] != 0 or (lengths < 0).any():
        why = "its offsets are not increasing from 0"
    elif int(offsets[-1]) != info["bytes"] or size != info["bytes"]:
        why = (f"'{data}' holds {size:,} bytes, the index {int(offsets[-1]):,} and the manifest "
               f"{info['bytes']:,}: truncated or changed since it was written")
    elif ((index["labels"] < 0) | (index["labels"] >= len(manifest.classes))).any():
        why = "a label is not one of the manifest's classes"
    elif manifest.encoding == "raw" and (lengths != manifest.record_bytes).any():
        why = f"a raw record is not {manifest.record_bytes} bytes (3 x {manifest.size}^2)"
    if why is not None:
        raise DataError(f"data.root: the {split} split's index '{path}' does not fit its records: "
                        f"{why}; write the shards again")
    return index


class ShardDataset(EncodedImages):
    """One split of a shards folder: records read through a memory map (held in memory when small)."""

    def __init__(self, root: Path, split: str, manifest: Manifest, image_size: int,
                 cache: bool | None = None, decode: Literal["cpu", "gpu"] = "cpu") -> None:
        self.root = root
        self.split = split
        self.manifest = manifest
        self.encoding = manifest.encoding
        self.stored_size = manifest.size
        self.image_size = image_size
        self.channels = 3
        self.classes = list(manifest.classes)
        self.decode = decode
        self.data_path = root / data_name(split)
        index = _read_index(root, split, manifest)
        self._offsets = index["offsets"].astype(np.int64)
        self._crc = index["crc32"].astype(np.uint32)
        self._paths = index["paths"]  # one numpy array: forked workers copy no objects
        self.labels = torch.from_numpy(index["labels"].astype(np.int64))
        source = Path(str(manifest.raw.get("source", "")))
        self.skipped: list[tuple[Path, str]] = [  # left out when the shards were written
            (source / str(rel), str(why)) for rel, why in manifest.splits[split].get("skipped", [])
            if isinstance(rel, str)]
        self._data: np.memmap | None = None
        self.images: torch.Tensor | None = None
        if cache is None:
            cache = len(self) * 3 * image_size**2 <= CACHE_LIMIT_BYTES
        if cache:
            self.images = torch.stack([self._read(i) for i in range(len(self))])

    def __len__(self) -> int:
        return len(self._crc)

    def __getstate__(self) -> dict[str, Any]:
        # a worker started by spawn maps the file itself: pickling a memmap copies its bytes
        return {**self.__dict__, "_data": None}

    @property
    def data(self) -> np.memmap:
        """The records file, memory-mapped read-only (opened once per process)."""
        if self._data is None:
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r")
        return self._data

    def source(self, index: int) -> str:
        """The path, relative to the source folder, that record ``index`` was made from."""
        return os.fsdecode(self._paths[index])

    def _record(self, index: int) -> np.ndarray | None:
        """Record ``index``'s bytes (a view of the map), or None with a warning if it is corrupt."""
        record = self.data[self._offsets[index]:self._offsets[index + 1]]
        if zlib.crc32(record) != self._crc[index]:
            self._corrupt(index, "its CRC32 does not match the index (the file changed after it "
                                 "was written)")
            return None
        return record

    def _corrupt(self, index: int, why: str) -> None:
        self.skipped.append((self.data_path, f"record {index} ({self.source(index)}): {why}"))
        warnings.warn(f"skipping corrupt record {index} of '{self.data_path}' "
                      f"({self.source(index)}): {why}", ImageReadWarning, stacklevel=4)

    def _blank(self) -> torch.Tensor:
        return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)

    def _read(self, index: int) -> torch.Tensor:
        """Record ``index`` as uint8 ``[3, image_size, image_size]``, decoded on the CPU."""
        if self.images is not None:
            return self.images[index]
        record = self._record(index)
        if record is None:
            return self._blank()
        if self.encoding == "raw":
            s = self.stored_size
            pixels = np.array(record).reshape(3, s, s)  # a copy: the map is read-only
            if self.image_size == s:
                return torch.from_numpy(pixels)
            square = centre_square(Image.fromarray(pixels.transpose(1, 2, 0)), self.image_size)
            return torch.from_numpy(np.ascontiguousarray(np.asarray(square).transpose(2, 0, 1)))
        try:  # smaller than stored: JPEG draft decoding where it halves the size, then resized
            return load_image(io.BytesIO(record), self.image_size)
        except UNREADABLE as exc:
            self._corrupt(index, f"{type(exc).__name__}: {exc}")
            return self._blank()

    def _encoded(self, index: int) -> torch.Tensor:
        record = self._record(index)
        if record is None:  # decoding it on the GPU fails, and gives a blank image
            return torch.zeros(0, dtype=torch.uint8)
        return torch.from_numpy(np.array(record))


def create(*, split: Literal["train", "test"] = "train", root: str = "data",
           image_size: Annotated[int | None, Bounds(ge=8, le=MAX_IMAGE_SIZE)] = None,
           cache: bool | None = None, decode: Literal["cpu", "gpu"] = "cpu") -> ShardDataset:
    """Image shards written by ``natkit shards`` (resized once, memory-mapped; see docs/reproduce.md).

    Args:
        root: the folder natkit shards wrote (shards.json, train.bin, test.bin, ...).
        image_size: the images' side (null: the size they were written at); a smaller one is
            resized when read, a larger one is refused.
        cache: decode every image into memory once (null: when they take at most 1 GiB).
        decode: where training batches are decoded: cpu (loader workers) or gpu (JPEG records,
            nvJPEG in the main process; workers only slice the records).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    base = Path(root).expanduser()
    manifest = read_manifest(base)
    if split not in manifest.splits:
        raise DataError(f"data.root: '{base}' holds no {split} split")
    size = manifest.size if image_size is None else image_size
    if size > manifest.size:
        raise ConfigError(f"data.image_size: {size} is larger than the {manifest.size} px the "
                          f"shards in '{base}' were written at; set at most {manifest.size}, or "
                          f"write them again with natkit shards --size {size}")
    if decode == "gpu":
        if manifest.encoding != "jpeg":
            raise ConfigError(f"data.decode: 'gpu' decodes JPEG records; the shards in '{base}' "
                              "hold raw pixels, with nothing to decode: use data.decode=cpu")
        from natkit.datasets.gpu_decode import check_available

        check_available()
    for other in manifest.splits:  # a broken test split is found now, not after training
        if other != split:
            ShardDataset(base, other, manifest, size, False, "cpu")
    return ShardDataset(base, split, manifest, size, cache, decode)
