"""The image-folder loader: cached file index, draft decoding, uint8 batches, persistent workers."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import benchmarks.loader as bench
import natkit
from benchmarks.loader import photograph, write_jpeg_folder
from natkit.datasets import TensorImageDataset, imagefolder
from natkit.datasets.gpu_decode import EncodedBatch, decode_batch
from natkit.datasets.images import ImageReadWarning, draft_for, load_image
from natkit.datasets.index import folder_index, index_path
from natkit.datasets.loader import BatchLoader
from natkit.errors import ConfigError
from natkit.transfer import to_float


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets its own natkit cache directory."""
    monkeypatch.setenv("NATKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def opens(monkeypatch):
    """Count PIL.Image.open calls."""
    calls = []
    real = Image.open

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def small_folder(root, per_class=6, classes=2):
    for c in range(classes):
        for i in range(per_class):
            path = root / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 14), (30 * c + 10, 20 * i, 90)).save(path)
    return root


def test_the_index_is_cached_and_a_changed_folder_rebuilds_it(host, tmp_path, cache_dir, opens):
    root = small_folder(tmp_path / "data")
    (root / "c1" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(ImageReadWarning, match="broken.png"):
        first = imagefolder.create(root=str(root), image_size=8, cache=False, test_fraction=0.25)
    assert len(opens) == 13 and index_path(root).is_file()
    assert index_path(root).parent.parent == cache_dir
    opens.clear()
    with pytest.warns(ImageReadWarning, match="broken.png"):  # told again, nothing opened
        again = imagefolder.create(root=str(root), image_size=8, cache=False, test_fraction=0.25)
    assert opens == []
    assert folder_index(root).cached
    assert again.files == first.files and torch.equal(again.labels, first.labels)
    assert [p.name for p, _ in again.skipped] == [p.name for p, _ in first.skipped]
    # a new file changes its folder's mtime: the index is rebuilt
    Image.new("RGB", (20, 14)).save(root / "c0" / "new.png")
    os.utime(root / "c0", ns=(1, 1))  # whatever the file system's mtime resolution
    grown = folder_index(root)
    assert not grown.cached and "c0/new.png" in grown.classes[0][1]
    assert len(opens) == 14
    assert folder_index(root).cached


def test_a_nested_folder_change_and_a_stale_cache_file_rebuild_the_index(tmp_path):
    root = small_folder(tmp_path / "data")
    (root / "c0" / "sub").mkdir()
    Image.new("RGB", (20, 14)).save(root / "c0" / "sub" / "deep.png")
    assert not folder_index(root).cached
    Image.new("RGB", (20, 14)).save(root / "c0" / "sub" / "deeper.png")
    os.utime(root / "c0" / "sub", ns=(2, 2))
    index = folder_index(root)
    assert not index.cached and "c0/sub/deeper.png" in index.classes[0][1]
    index_path(root).write_text("{not json")
    assert not folder_index(root).cached
    assert not folder_index(root, use_cache=False).cached


def big_jpeg(width=2400, height=1600) -> bytes:
    buffer = io.BytesIO()
    photograph(np.random.default_rng(3), width, height).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_draft_decoding_is_close_to_a_full_decode(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(big_jpeg())
    with Image.open(path) as image:
        draft_for(image, 224)
        assert image.size == (600, 400)  # a quarter: still at least 224 on the short side
    fast = load_image(path, 224).float()
    full = load_image(path, 224, draft=False).float()
    assert fast.shape == full.shape == (3, 224, 224)
    assert (fast - full).abs().mean() < 1.5  # of 255 (measured: 0.35)
    with Image.open(io.BytesIO(big_jpeg(300, 200))) as small:
        draft_for(small, 224)
        assert small.size == (300, 200)  # not twice the size needed: decoded in full


def test_uint8_batches_made_float_equal_the_float_path(host, tmp_path):
    shapes = natkit.create_dataset("shapes", split="train", num_train=16, image_size=12)
    idx = torch.tensor([3, 0, 7])
    assert shapes.raw_batch(idx).dtype == torch.uint8
    assert torch.equal(to_float(shapes.raw_batch(idx)), shapes.get_batch(idx))
    folder = imagefolder.create(root=str(small_folder(tmp_path / "d")), image_size=8, cache=False,
                                test_fraction=0.25)
    raw = folder.raw_batch(idx)
    assert raw.dtype == torch.uint8 and torch.equal(to_float(raw), folder.get_batch(idx))
    for workers_make_float in (False, True):  # False: what workers do for a CUDA device
        with BatchLoader(folder, 2, torch.Generator().manual_seed(0),
                         workers_make_float=workers_make_float) as loader:
            images, got, _ = next(iter(loader.epoch(idx.view(1, -1))))
        assert images.is_floating_point() == workers_make_float and torch.equal(got, idx)
        assert torch.equal(to_float(images), folder.get_batch(idx))


class PidImages(TensorImageDataset):
    """In-memory images whose raw items also say which process loaded them."""

    def raw_item(self, index: int) -> torch.Tensor:
        return torch.cat([self.images[index].flatten().long(), torch.tensor([os.getpid()])])


def test_the_persistent_loader_yields_the_old_loaders_batches_with_the_same_workers(host):
    data = natkit.create_dataset("shapes", split="train", num_train=40, image_size=8)
    ds = PidImages(data.images, data.labels, data.classes)
    epochs = [torch.randperm(40, generator=torch.Generator().manual_seed(e))[:32].view(-1, 8)
              for e in range(2)]
    pids = []
    with BatchLoader(ds, 2, torch.Generator().manual_seed(0), workers_make_float=False) as loader:
        for rows in epochs:
            # the loader of earlier natkit versions: a new DataLoader (and workers) each epoch
            old = DataLoader(data, batch_sampler=rows.tolist(), num_workers=2,
                             persistent_workers=False, generator=torch.Generator().manual_seed(0))
            new = list(loader.epoch(rows))
            assert len(new) == len(old) == 4
            for (raw, idx, labels), (images, old_idx, old_labels) in zip(new, old, strict=True):
                assert torch.equal(idx, old_idx) and torch.equal(labels, old_labels)
                pixels = raw[:, :-1].to(torch.uint8).view(images.shape)
                assert torch.equal(to_float(pixels), images)
                pids.append(set(raw[:, -1].tolist()))
        assert not list(loader.epoch(epochs[0][:0]))  # an empty epoch (a resume at its end)
    first, second = set().union(*pids[:4]), set().union(*pids[4:])
    assert first == second and os.getpid() not in first  # the same two worker processes


def test_gpu_decoding_is_refused_without_cuda(host, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^data.decode: 'gpu' needs a CUDA device"):
        natkit.create_dataset("imagefolder", split="train", root=str(tmp_path), decode="gpu")
    assert ConfigError.exit_code == 2


def test_the_gpu_decode_path_matches_the_cpu_one_on_the_cpu(host, tmp_path, monkeypatch):
    """Workers hand over bytes, decode_raw decodes them (here with torchvision on the CPU)."""
    root = tmp_path / "jpegs"
    write_jpeg_folder(root / "train", 8, (120, 90), classes=2)
    write_jpeg_folder(root / "val", 2, (120, 90), classes=2)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "train" / "class00" / "red.png")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = imagefolder.create(root=str(root), image_size=32, cache=False, decode="gpu")
    cpu = imagefolder.create(root=str(root), image_size=32, cache=False)
    rows = torch.arange(len(gpu)).view(1, -1)
    packed = gpu.raw_batch(rows[0])  # one tensor per batch crosses from a worker, not one a file
    assert isinstance(packed, EncodedBatch) and packed.data.ndim == 1
    files = packed.files()
    assert [len(f) for f in files] == [gpu.path(i).stat().st_size for i in range(len(gpu))]
    assert bytes(files[-1].numpy()) == gpu.path(len(gpu) - 1).read_bytes()
    with BatchLoader(gpu, 1, torch.Generator().manual_seed(0), torch.device("cpu")) as loader:
        (images, _, _), = loader.epoch(rows)
    expected = cpu.raw_batch(rows[0])
    assert images.dtype == torch.uint8 and images.shape == expected.shape
    assert (images.float() - expected.float()).abs().mean() < 4.0
    with pytest.warns(ImageReadWarning, match="#1"):
        out = decode_batch([images.new_tensor(list(b"\xff\xd8 broken")),
                            images.new_tensor(list(b"junk"))], 32, torch.device("cpu"))
    assert out.shape == (2, 3, 32, 32) and not out.any()


def test_the_loader_benchmark_runs_and_reports_both_loaders(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.FOLDERS, "imagenet", (64, 48))
    result = bench.loader_speed([0, 2], {"imagenet": 24}, batch_size=8, passes=1, size=32,
                                device=torch.device("cpu"), per_worker=3)
    assert {r.loader for r in result.rows} == {"natkit", "torchvision"}
    assert all(r.median_images_per_s > 0 for r in result.rows)
    # steady state: 3 timed batches per worker, as many with 0 workers as with 1
    assert {(r.workers, r.timed_batches) for r in result.rows} == {(0, 3), (2, 6)}
    assert set(result.one_core["imagenet"]) == {"natkit", "torchvision"}
    for r in result.rows:
        one_core = result.one_core["imagenet"][r.loader]
        assert r.efficiency == pytest.approx(r.median_images_per_s / (max(r.workers, 1) * one_core))
    text = bench.loader_markdown(result)
    assert "| imagenet (24 of ~64x48) | 0 |" in text and "natkit / torchvision" in text
    assert "natkit efficiency | torchvision efficiency |" in text and "One-core rates:" in text


def test_a_benchmark_stream_is_shuffled_passes_back_to_back():
    rows = bench.stream_rows(10, 4, 5, seed=1)  # 2 batches a pass (2 images left out each)
    assert rows.shape == (5, 4)
    for first in (0, 2):
        one_pass = rows[first:first + 2].flatten()
        assert len(set(one_pass.tolist())) == 8 and one_pass.max() < 10
    assert not torch.equal(rows[0:2], rows[2:4])  # each pass shuffled afresh
    assert bench.timed_batches(0, 20) == bench.timed_batches(1, 20) == 20
    assert bench.timed_batches(16, 20) == 320 and bench.warmup_batches(16) == 32
