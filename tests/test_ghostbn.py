"""train.bn_batch: BatchNorm over groups of the batch, as the authors' two GPUs under DataParallelTable."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from natkit import builders
from natkit.distributed import Comm
from natkit.errors import ConfigError
from natkit.ghostbn import GhostBatchNorm1d, GhostBatchNorm2d, ghost_batchnorm


def _bn2d(seed: int = 0) -> nn.BatchNorm2d:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():  # not the identity: a ghost must carry these along
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


@pytest.mark.parametrize("n, sizes", [(8, [4, 4]), (10, [4, 3, 3]), (4, [4]), (3, [3])])
def test_each_group_is_normalised_alone_and_the_first_moves_the_statistics(n, sizes):
    """DataParallelTable's sliceRange: ceil(n / group) near-equal parts, the first ones larger."""
    x = torch.randn(n, 3, 5, 5) * torch.arange(1, n + 1).view(n, 1, 1, 1)  # groups differ
    plain = _bn2d()
    ghost = ghost_batchnorm(copy.deepcopy(plain), 4)
    assert type(ghost) is GhostBatchNorm2d and ghost.group == 4
    out = ghost(x)
    # each replica of the network: a BatchNorm of its own on its part of the batch
    replicas = [copy.deepcopy(plain) for _ in sizes]
    want = torch.cat([r(part) for r, part in zip(replicas, x.split(sizes), strict=True)])
    torch.testing.assert_close(out, want)
    if len(sizes) > 1:
        assert not torch.allclose(out, copy.deepcopy(plain)(x), atol=1e-3)  # not the whole batch
    # the model the authors saved is GPU 1's replica: its statistics come from the first part
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ghost, name), getattr(replicas[0], name))
    # evaluation uses the running statistics, as BatchNorm does
    ghost.eval()
    replicas[0].eval()
    torch.testing.assert_close(ghost(x), replicas[0](x))


def test_a_network_keeps_its_parameters_keys_and_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(),
                        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8, affine=False)))
    plain = copy.deepcopy(net)
    keys, params = list(net.state_dict()), list(net.parameters())
    ghost = ghost_batchnorm(net, 4)
    assert ghost is net and list(net.state_dict()) == keys  # checkpoints load either way
    assert all(a is b for a, b in zip(net.parameters(), params, strict=True))  # the optimizer's
    assert [type(m) for m in net.modules()].count(GhostBatchNorm1d) == 2
    x = torch.randn(8, 6)
    net(x).sum().backward()
    halves = [copy.deepcopy(plain) for _ in range(2)]
    sum(h(part).sum() for h, part in zip(halves, x.split(4), strict=True)).backward()
    for p, a, b in zip(net.parameters(), *(h.parameters() for h in halves), strict=True):
        torch.testing.assert_close(p.grad, a.grad + b.grad)  # as DataParallelTable sums them
    with pytest.raises(ValueError, match="at least 2"):
        ghost_batchnorm(nn.BatchNorm1d(2), 1)


def test_a_run_with_bn_batch_trains_ghost_batchnorm_and_the_default_does_not(tiny_config):
    config = tiny_config("train.bn_batch=8")  # batch 16: two groups of 8
    dataset = builders.load_training_set(config)
    model, _ = builders.training_network(config, builders.initial_network(config, dataset),
                                         torch.device("cpu"))
    groups = {m.group for m in model.modules() if isinstance(m, GhostBatchNorm2d)}
    assert groups == {8} and not any(type(m) is nn.BatchNorm2d for m in model.modules())
    config = tiny_config()
    model, _ = builders.training_network(config, builders.initial_network(config, dataset),
                                         torch.device("cpu"))
    assert not any(isinstance(m, (GhostBatchNorm1d, GhostBatchNorm2d)) for m in model.modules())


@pytest.mark.parametrize("overrides, message", [
    (("train.bn_batch=8", "train.sync_bn=true"),
     "train.sync_bn: SyncBatchNorm pools each BatchNorm's statistics over every rank, "
     "train.bn_batch=8 splits them"),
    (("train.bn_batch=16",), "train.bn_batch: 16 images per BatchNorm statistic, but each of the "
                             "2 ranks holds 8 of the batch of 16; use at most 1 rank"),
])
def test_bn_batch_is_refused_where_the_ranks_cannot_honour_it(tiny_config, overrides, message):
    config = tiny_config("world_size=2", *overrides)
    dataset = builders.load_training_set(config)
    network = builders.initial_network(config, dataset)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        builders.training_network(config, network, torch.device("cpu"),
                                  Comm(rank=0, world_size=2))


def test_one_process_takes_a_bn_batch_larger_than_its_batch(tiny_config):
    # the paper preset's 128 with a small test batch: the whole batch, as plain BatchNorm
    config = tiny_config("train.bn_batch=128")
    dataset = builders.load_training_set(config)
    network = builders.initial_network(config, dataset)
    plain = copy.deepcopy(network).train()
    model, _ = builders.training_network(config, network, torch.device("cpu"))
    x = dataset.get_batch(torch.arange(16))
    torch.testing.assert_close(model.train()(x), plain(x))


def test_bn_batch_that_would_leave_a_group_of_one_is_refused(tiny_config):
    config = tiny_config("train.batch_size=3", "train.bn_batch=2")
    with pytest.raises(ConfigError, match=r"^train.bn_batch: 2 splits each rank's 3 images into "
                                          r"groups of 1"):
        builders.check_bn_batch(config)
    builders.check_bn_batch(tiny_config("train.batch_size=4", "train.bn_batch=2"))
