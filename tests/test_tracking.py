"""natkit.tracking: the names and values a logger plugin logs a run's records, results and config under."""

from __future__ import annotations

import json

from natkit.tracking import flatten, hparams, numbers, results


def test_a_records_numbers_are_named_by_section_and_key():
    step = {"kind": "step", "epoch": 0, "step": 2, "loss": 1.5, "lr": 0.1, "images_per_s": 900.0,
            "world_size": 1}
    assert numbers(step, "train") == {"train/loss": 1.5, "train/lr": 0.1, "train/images_per_s": 900.0}
    # a step that logged nothing, and what is not a number (None, a bool, text) are left out
    assert numbers({"epoch": 0, "step": 3}, "train") == {}
    assert numbers({"changed": None, "ok": True, "name": "x", "n": 3}, "epoch") == {"epoch/n": 3.0}
    # nested statistics (an epoch's `method`) are flattened
    assert numbers({"loss": 1.0, "method": {"changed": 0.5, "largest_cluster": 7}}, "epoch") == {
        "epoch/loss": 1.0, "epoch/method/changed": 0.5, "epoch/method/largest_cluster": 7.0}


def test_results_are_probe_scalars():
    data = {"linear": {"trained": 0.5, "random_init": 0.25}, "knn": {"trained": {"k1": 0.75}},
            "note": "text"}
    assert results(data) == {"probe/linear/trained": 0.5, "probe/linear/random_init": 0.25,
                             "probe/knn/trained/k1": 0.75}


def test_the_config_as_flat_hyperparameters(tiny_config):
    config = tiny_config()
    flat = hparams(config)
    assert flat.keys() == flatten(config.to_dict(), sep=".").keys()
    assert flat["train.lr"] == config.train.lr and flat["method.name"] == "nat"
    assert flat["backbone.widths"] == json.dumps(list(config.backbone["widths"]))
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
