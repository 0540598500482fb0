"""The ``natkit shards`` command: write an image folder once as shards resized to the training size.

Only the command's options live here, so that ``natkit --help`` stays light; the
format and its reader are :mod:`natkit.datasets.shards`, the writer
:mod:`natkit.datasets.shard_writer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def shards(
    src: Annotated[Path, typer.Argument(help="An image folder as imagefolder reads it: "
                                        "SRC/<class>/<image>, or train/ and test/ (or val/) "
                                        "trees of them.")],
    out_dir: Annotated[Path, typer.Argument(help="The folder to write (it must not exist, be "
                                            "empty, or hold shards to replace with --force).")],
    size: Annotated[int, typer.Option(help="The images' side: shorter side resized to it, centre "
                                           "square (the paper preset's data.image_size).")] = 256,
    encoding: Annotated[str, typer.Option(help="jpeg (re-encoded at --quality: about 30 KB at "
                                               "256 px) or raw (uint8 pixels, 3 x size^2 bytes: "
                                               "nothing to decode).")] = "jpeg",
    quality: Annotated[int, typer.Option(help="JPEG quality, 1-100 (chroma not subsampled).")] = 95,
    workers: Annotated[int | None, typer.Option(help="Processes that decode and encode "
                                                     "[default: every core]; 0: this one.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Without train/test trees: the stratified "
                                                      "fraction held out as the test split, as "
                                                      "imagefolder's data.test_fraction.")] = 0.2,
    seed: Annotated[int, typer.Option(help="The seed of that held-out split (data.seed).")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace the shards already in "
                                                              "OUT_DIR.")] = False,
) -> None:
    """Write an image folder's train and test splits as shards: each image resized once.

    The splits, labels and classes are imagefolder's on the same folder. Train from them with
    --data shards --set data.root=OUT_DIR: records are read through a memory map, with no file
    opened per image. Unreadable images are skipped with a warning and counted; OUT_DIR appears
    only once complete (an interrupted write leaves nothing that reads as finished).
    """
    from natkit.datasets.shard_writer import write_shards
    from natkit.environment import usable_cores

    written = write_shards(src, out_dir, size=size, quality=quality, encoding=encoding,
                           workers=usable_cores() if workers is None else workers,
                           test_fraction=test_fraction, seed=seed, force=force)
    for split in written.splits:
        typer.echo(f"{split.split}: {split.images:,} images, {split.bytes / 1e6:,.1f} MB"
                   + (f", {len(split.skipped):,} skipped (unreadable)" if split.skipped else ""),
                   err=True)
    total = sum(s.images + len(s.skipped) for s in written.splits)
    typer.echo(f"wrote '{written.out}' ({written.encoding}, {written.size} px) in "
               f"{written.seconds:.0f} s, {total / max(written.seconds, 1e-9):,.0f} images/s; "
               f"train with: --data shards --set data.root={written.out}", err=True)
