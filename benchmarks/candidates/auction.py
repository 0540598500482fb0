"""Candidate exact assignment solver: a Jacobi forward auction with epsilon scaling, in pure torch.

Algorithm (Bertsekas' auction, maximising the benefit ``a = -cost``). Each column ``j`` has a price
``p_j``. In a round every unassigned row ``i`` bids at once (Jacobi, not Gauss-Seidel, so one round is a
handful of batched tensor ops): it finds its best value ``v1 = max_j a_ij - p_j`` at column ``j1`` and its
second-best value ``v2`` with ``topk(2)``, and bids ``p_j1 + (v1 - v2) + eps``. Each column that got bids
goes to its highest bidder (``scatter_reduce`` amax, ties to the lowest row), takes that bid as its new
price and evicts its previous owner, who bids again in a later round. Every bid raises a price by at least
``eps``, so a phase ends once every row holds a column. Epsilon scaling runs phases with ``eps`` divided by
``scale`` each time, keeping the prices and resetting the assignment, so the cheap coarse phases leave
prices under which the fine phases settle in few rounds.

Exactness bound. At the end every row is within ``eps`` of its best value at the final prices
(eps-complementary slackness), so the prices form a dual solution whose value exceeds the primal one by at
most ``b * eps``: the returned permutation costs at most ``b * eps_final`` more than the optimum
(:func:`certify_gap` computes the certified gap, usually a few times smaller). Integer costs are solved
exactly once ``eps_final < 1 / b``. The default ``eps_final`` is ``max|cost| * finfo(cost.dtype).eps / b``:
any better assignment beats the result by less than one unit in the last place of the largest cost entry,
a difference a float32 input cannot resolve, and float32 integer costs below ``2**23`` in magnitude come out
exactly optimal. Any ``eps_final`` is raised to at least ``spread * 2**-40`` (``spread = max - min`` of the
cost): prices are float64 and a smaller increment could round away and let the auction cycle, so for float64
inputs the bound is ``b * spread * 2**-40`` (exact for integer costs while ``b * spread < 2**40``).

Host synchronisations: one per round (``nonzero`` collects the unassigned rows, which both sizes the round's
work to the bidders and ends the phase when there are none), plus a few per call to read the cost's range.

Why it lives in ``benchmarks/candidates``: it is a candidate, to be timed on a GPU against scipy's
``linear_sum_assignment`` and torch-linear-assignment; only a winner would be promoted into
``natkit.solvers``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from natkit.solvers import Solver, is_permutation

# Smallest eps relative to the cost's spread: float64 prices stay within a few spreads of zero, so this is
# thousands of ulps and every bid really moves a price.
PRICE_RESOLUTION = 2.0**-40


class AuctionResult(NamedTuple):
    """What :func:`auction` found: the permutation, the prices (for benefit -cost) and the effort."""

    perm: torch.Tensor
    prices: torch.Tensor
    eps: float
    rounds: int
    phases: int


def default_eps_final(cost: torch.Tensor) -> float:
    """The default final eps: one last-place unit of the largest cost entry, shared among the b rows."""
    lo, hi = (float(v) for v in torch.aminmax(cost.detach()))
    return _eps_final(lo, hi, cost.dtype, cost.shape[0])


def _eps_final(lo: float, hi: float, dtype: torch.dtype, b: int) -> float:
    unit = max(abs(lo), abs(hi)) * torch.finfo(dtype).eps
    return max(unit / b, (hi - lo) * PRICE_RESOLUTION)


def auction(
    cost: torch.Tensor, *, eps_final: float | None = None, scale: float = 5.0, max_rounds: int = 100_000
) -> AuctionResult:
    """Minimise ``sum cost[i, perm[i]]`` by an epsilon-scaled Jacobi auction; see the module docstring."""
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square [b, b] matrix, got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise TypeError(f"cost must be a floating-point tensor, got {cost.dtype}")
    if scale <= 1:
        raise ValueError(f"scale must exceed 1, got {scale}")
    if eps_final is not None and not eps_final > 0:
        raise ValueError(f"eps_final must be positive, got {eps_final}")
    b, device = cost.shape[0], cost.device
    benefit = -cost.detach().to(torch.float64)
    prices = torch.zeros(b, dtype=torch.float64, device=device)
    lo, hi = (float(v) for v in torch.aminmax(benefit))
    spread = hi - lo
    if b <= 1 or spread == 0:
        # every permutation is optimal, and prices of zero certify it
        return AuctionResult(torch.arange(b, device=device), prices, 0.0, 0, 0)
    if eps_final is None:
        eps_final = _eps_final(-hi, -lo, cost.dtype, b)
    eps_final = max(eps_final, spread * PRICE_RESOLUTION)
    eps = max(spread / scale, eps_final)

    rows = torch.arange(b, device=device)
    no_row = torch.full((b,), b, dtype=torch.int64, device=device)
    no_bid = torch.full((b,), -math.inf, dtype=torch.float64, device=device)
    # one spare slot at index b absorbs the scatters of columns that got no bid, so no round needs a mask
    # that would have to be synchronised to the host
    col_of = torch.empty(b + 1, dtype=torch.int64, device=device)
    owner = torch.empty(b, dtype=torch.int64, device=device)
    rounds = phases = 0
    while True:
        phases += 1
        col_of.fill_(-1)
        owner.fill_(b)
        # only price differences matter; re-centring keeps float64 resolution where the bids happen
        prices -= prices.min()
        while True:
            bidders = torch.nonzero(col_of[:b] < 0).squeeze(1)
            if bidders.numel() == 0:
                break
            if rounds >= max_rounds:
                raise RuntimeError(f"auction did not finish within max_rounds={max_rounds} (eps={eps:.3g})")
            rounds += 1
            top, cols = (benefit.index_select(0, bidders) - prices).topk(2, dim=1)
            target = cols[:, 0]
            bids = prices[target] + (top[:, 0] - top[:, 1]) + eps
            best = no_bid.scatter_reduce(0, target, bids, "amax")
            winner = no_row.scatter_reduce(0, target, torch.where(bids == best[target], bidders, b), "amin")
            won = winner < b
            col_of.scatter_(0, torch.where(won, owner, b), -1)
            col_of.scatter_(0, winner, rows)
            owner = torch.where(won, winner, owner)
            prices = torch.where(won, best, prices)
        if eps <= eps_final:
            break
        eps = max(eps / scale, eps_final)
    return AuctionResult(col_of[:b].clone(), prices, eps, rounds, phases)


def auction_assignment(
    cost: torch.Tensor, *, eps_final: float | None = None, scale: float = 5.0, max_rounds: int = 100_000
) -> torch.Tensor:
    """The permutation from :func:`auction`: int64 ``perm[b]`` on cost's device, within ``b * eps_final``."""
    return auction(cost, eps_final=eps_final, scale=scale, max_rounds=max_rounds).perm


def certify_gap(cost: torch.Tensor, perm: torch.Tensor, prices: torch.Tensor) -> float:
    """An upper bound on ``cost(perm) - optimum``: the primal-dual gap that the prices certify."""
    benefit = -cost.detach().to(torch.float64)
    prices = prices.to(benefit)
    primal = benefit[torch.arange(benefit.shape[0], device=benefit.device), perm].sum()
    dual = prices.sum() + (benefit - prices).amax(dim=1).sum()
    return float(dual - primal)


class AuctionSolver(Solver):
    """Exact up to ``b * eps_final`` (see the module docstring): an epsilon-scaled auction in torch."""

    exact = True

    def __init__(self, eps_final: float | None = None, scale: float = 5.0, max_rounds: int = 100_000):
        self.eps_final = eps_final
        self.scale = scale
        self.max_rounds = max_rounds

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        """Solve a checked cost matrix with b >= 2, and refuse to hand back anything but a permutation."""
        perm = auction_assignment(
            cost, eps_final=self.eps_final, scale=self.scale, max_rounds=self.max_rounds
        )
        if not is_permutation(perm, cost.shape[0]):
            raise RuntimeError("auction returned a result that is not a permutation")
        return perm
