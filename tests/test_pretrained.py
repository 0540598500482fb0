"""The RGB encoder natkit export writes: it gives the run's own features, and loads anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import natkit
from natkit import config, lifecycle
from natkit.builders import initial_network, load_dataset, read_run_config
from natkit.checkpoint import load_checkpoint
from natkit.cli import app
from natkit.errors import CheckpointError
from natkit.evaluation.features import extract_features, recalibrate_batchnorm
from natkit.export import export
from natkit.pretrained import read_card
from natkit.testing import TINY

REPO = Path(__file__).resolve().parents[1]
QUIET = Console(stderr=True, quiet=True)
runner = CliRunner()


def _evaluated_run(tmp_path: Path, *extra: str) -> Path:
    # another component's name drops the tiny run's options of that section's component
    renamed = {e.split(".")[0] for e in extra if e.split("=")[0].endswith(".name")}
    tiny = [o for o in TINY if o.split(".")[0] not in renamed or o.startswith("data.image_size")]
    run = lifecycle.start(config.build(overrides=[*tiny, "train.epochs=1", *extra]),
                          tmp_path / "run", console=QUIET)
    lifecycle.execute(run, evaluate=True, console=QUIET)
    return tmp_path / "run"


def _probed_features(run_dir: Path, *, recompute: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images, and their features as the run's evaluation reads them."""
    cfg = read_run_config(run_dir)
    test_set = load_dataset(cfg, "test")
    network = initial_network(cfg, test_set)
    network.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    if recompute:
        recalibrate_batchnorm(network, load_dataset(cfg, "train"), torch.device("cpu"),
                              cfg.eval.batch_size)
    network.eval()
    images = test_set.get_batch(torch.arange(len(test_set)))
    return images, extract_features(network, test_set, cfg.eval.layer, torch.device("cpu"),
                                    tap_pool=cfg.eval.tap_pool)


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@pytest.mark.parametrize("extra", [(), ("data.name=digits", "eval.layer=conv3")],
                         ids=["shapes-sobel", "digits-grayscale-conv3"])
def test_the_rgb_encoder_gives_the_features_the_run_probed(natkit_host, tmp_path, extra):
    run_dir = _evaluated_run(tmp_path, *extra)
    out = tmp_path / "export" / "model.pt"
    export(run_dir, out, device="cpu")
    encoder = natkit.load_pretrained(tmp_path / "export" / "model.rgb.safetensors")
    images, probed = _probed_features(run_dir)
    with torch.no_grad():
        features = encoder(_rgb(images))
    assert features.shape == probed.shape
    torch.testing.assert_close(features, probed, rtol=1e-5, atol=1e-6)
    # the card says what a colleague needs, and the JSON beside is the same card
    card = encoder.card
    assert card == json.loads((tmp_path / "export" / "model.rgb.json").read_text())
    assert card["results"] == json.loads((run_dir / "results.json").read_text())
    assert card["feature_dim"] == probed.shape[1]
    assert card["input"]["range"] == [0.0, 1.0] and card["input"]["size"] == images.shape[-1]
    assert card["config"] == read_run_config(run_dir).to_dict()
    assert card["versions"]["torch"] == torch.__version__
    # the preprocessing is folded in, frozen; the backbone can be fine-tuned
    assert not any(p.requires_grad for p in encoder.preprocess.parameters())
    assert all(p.requires_grad for p in encoder.backbone.parameters())


def test_running_statistics_keep_the_checkpoint_s_and_need_no_training_data(natkit_host, tmp_path):
    run_dir = _evaluated_run(tmp_path)
    export(run_dir, tmp_path / "running.pt", batchnorm="running")
    export(run_dir, tmp_path / "recomputed.pt")
    running = natkit.load_pretrained(tmp_path / "running.rgb.safetensors")
    recomputed = natkit.load_pretrained(tmp_path / "recomputed.rgb.safetensors")
    images, as_checkpoint = _probed_features(run_dir, recompute=False)
    with torch.no_grad():
        torch.testing.assert_close(running(images), as_checkpoint, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(recomputed(images), as_checkpoint, atol=1e-3)
    assert running.card["batchnorm"].startswith("running averages")
    # the plain backbone export carries the same statistics as the encoder beside it
    for name in ("running", "recomputed"):
        plain = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        encoder = load_file(tmp_path / f"{name}.rgb.safetensors")
        for key, value in plain.items():
            assert torch.equal(value, encoder[f"backbone.{key}"]), key


def test_a_timm_backbone_s_encoder_loads_through_torch_hub(natkit_host, tmp_path):
    run_dir = _evaluated_run(tmp_path, "backbone.name=timm:resnet18", "preprocess.name=clean",
                             "data.image_size=32", "eval.probes=[knn]")
    assert runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "r18.pt")]
                         ).exit_code == 0
    hub = torch.hub.load(str(REPO), "encoder", str(tmp_path / "r18.rgb.safetensors"),
                         source="local", trust_repo=True)
    images, probed = _probed_features(run_dir)
    with torch.no_grad():
        torch.testing.assert_close(hub(images), probed, rtol=1e-5, atol=1e-5)
    untrained = torch.hub.load(str(REPO), "backbone", "alexnet", in_chans=2, source="local",
                               trust_repo=True)
    assert untrained.num_features > 0


def test_an_encoder_centre_crops_larger_images_and_refuses_non_rgb(natkit_host, tmp_path):
    run_dir = _evaluated_run(tmp_path, "eval.probes=[knn]")
    export(run_dir, tmp_path / "m.pt")
    encoder = natkit.load_pretrained(tmp_path / "m.rgb.safetensors")
    images = torch.rand(2, 3, 16, 16)
    framed = torch.zeros(2, 3, 20, 20)
    framed[..., 2:18, 2:18] = images
    with torch.no_grad():
        torch.testing.assert_close(encoder(framed), encoder(images))
    with pytest.raises(ValueError, match=r"expected RGB images \[batch, 3, height, width\], got "
                                         r"shape \(2, 1, 16, 16\)"):
        encoder(images[:, :1])
    with pytest.raises(ValueError, match=r"expected images of at least 16 x 16 \(the model "
                                         r"card's input size\), got \(12, 12\)"):
        encoder(images[..., :12, :12])


def test_load_pretrained_refuses_what_natkit_did_not_write_in_one_line(natkit_host, tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*missing.safetensors' does not exist"):
        natkit.load_pretrained(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"'.*junk.safetensors' is not a readable "
                                              r"safetensors file"):
        natkit.load_pretrained(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match=r"holds no natkit model card: it was not written "
                                              r"by natkit export"):
        natkit.load_pretrained(tmp_path / "foreign.safetensors")

    run_dir = _evaluated_run(tmp_path, "eval.probes=[knn]")
    export(run_dir, tmp_path / "m.pt")
    path = tmp_path / "m.rgb.safetensors"
    card = read_card(path)
    state = load_file(path)
    name = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[name] = torch.zeros(1, 1, 1, 1)
    save_file(state, path, metadata={"natkit": json.dumps(card)})
    with pytest.raises(CheckpointError, match=rf"does not fit its model card's architecture: .*"
                                              rf"{name}") as info:
        natkit.load_pretrained(path)
    assert "\n" not in str(info.value)
    save_file(state, path, metadata={"natkit": json.dumps({**card, "format": "natkit-encoder/9"})})
    with pytest.raises(CheckpointError, match=r"is a 'natkit-encoder/9' file; this natkit reads "
                                              r"'natkit-encoder/1'"):
        natkit.load_pretrained(path)


def test_the_encoder_s_files_are_refused_without_force_and_never_replace_run_files(
        natkit_host, tmp_path):
    run_dir = _evaluated_run(tmp_path, "eval.probes=[knn]")
    (tmp_path / "m.rgb.safetensors").write_bytes(b"precious")
    result = runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "m.pt")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: --out: '{tmp_path / 'm.rgb.safetensors'}' already "
                                     "exists (the RGB encoder); use --force to overwrite it")
    assert (tmp_path / "m.rgb.safetensors").read_bytes() == b"precious"
    assert not (tmp_path / "m.pt").exists()
    # results.json is the run's: an export named 'results.rgb...' beside it is fine, but an
    # export whose card would be the run's own file is refused, --force or not
    (run_dir / "results.rgb.json").write_text("{}")
    owned = runner.invoke(app, ["export", str(run_dir), "-o", str(run_dir / "results.json"),
                                "--force"])
    assert owned.exit_code == 2 and "would replace its file 'results.json'" in owned.stderr
    clash = runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "x.rgb")])
    assert clash.exit_code == 2 and "would give two of the export's files one name" in clash.stderr
    assert not list(tmp_path.glob("x.*"))


def test_a_bad_device_is_refused_before_any_work_naming_the_option(natkit_host, tmp_path):
    run_dir = _evaluated_run(tmp_path, "eval.probes=[knn]")
    for batchnorm in ("recompute", "running"):
        result = runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "m.pt"),
                                     "--batchnorm", batchnorm, "--device", "bogus"])
        assert result.exit_code == 2
        assert result.stderr.startswith("error: --device: 'bogus' is not a device")
        assert not list(tmp_path.glob("m.*"))
    export(run_dir, tmp_path / "m.pt")
    with pytest.raises(natkit.NatkitError, match=r"^(device: cannot use 'bogus' here)"):
        natkit.load_pretrained(tmp_path / "m.rgb.safetensors", device="bogus")


def test_a_transformer_s_load_recipe_builds_it_for_the_run_s_images(natkit_host, tmp_path):
    import timm  # noqa: F401  (the recipe names it)

    run_dir = _evaluated_run(tmp_path, "backbone.name=timm:vit_tiny_patch16_224",
                             "backbone.patch_size=8", "preprocess.name=clean",
                             "data.image_size=32", "eval.probes=[knn]")
    info = export(run_dir, tmp_path / "vit.pt", batchnorm="running")
    assert "img_size=32" in info["load_with"]
    recipe = info["load_with"].replace("FILE", repr(str(tmp_path / "vit.pt")))
    eval(recipe)  # strict: every tensor fits, the position embeddings included
