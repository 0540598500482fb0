"""A folder of photos to follow docs/tutorial.md with, made from photographs pip installed.

Three real photographs ship inside scikit-learn and matplotlib (a Chinese temple, a
flower, Grace Hopper's portrait). Each becomes a class folder of random crops of it,
of different sizes and positions, some mirrored, saved as JPEG files:

    python docs/examples/make_photos.py photos --per-class 200

Use your own photos instead: any ``photos/<class>/<image>`` tree works the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def sources() -> dict[str, Path]:
    """The photographs, by class name: files inside the installed scikit-learn and matplotlib."""
    import matplotlib
    import sklearn

    return {"temple": Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
            "flower": Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
            "portrait": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}


def make_photos(root: Path, per_class: int = 200, seed: int = 0) -> int:
    """Write ``per_class`` random crops of each photograph under ``root/<class>/``; returns the count."""
    rng = np.random.default_rng(seed)
    written = 0
    for name, path in sources().items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
            width, height = photo.size
            for i in range(per_class):
                side = int(rng.uniform(0.2, 0.5) * min(width, height))
                aspect = rng.uniform(0.75, 1.33)
                w, h = min(width, int(side * aspect)), side
                left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
                crop = photo.crop((left, top, left + w, top + h))
                if rng.random() < 0.5:
                    crop = ImageOps.mirror(crop)
                crop = crop.resize((int(w * 128 / h), 128), Image.Resampling.LANCZOS)
                crop.save(folder / f"{name}-{i:04d}.jpg", quality=90)
                written += 1
    return written


def main() -> None:
    """Command line: ``make_photos.py ROOT [--per-class N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to create (class folders inside)")
    parser.add_argument("--per-class", type=int, default=200, help="crops of each photograph")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    count = make_photos(args.root, args.per_class, args.seed)
    print(f"wrote {count} photos in {len(sources())} class folders under {args.root}")


if __name__ == "__main__":
    main()
