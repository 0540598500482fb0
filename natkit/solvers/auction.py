"""Exact assignment by an epsilon-scaled auction, fused into one Triton kernel per batch of problems.

Algorithm (Bertsekas' forward auction, maximising the benefit ``a = -cost``). Column ``j`` has a price
``p_j``; a row holding column ``j`` is eps-happy when ``a_ij - p_j >= max_k (a_ik - p_k) - eps``. In a round
up to ``bidders`` free rows (the lowest-numbered ones) bid at once: each finds its best value ``v1`` at
column ``j1`` and its second-best value ``v2`` and bids ``p_j1 + (v1 - v2) + eps``. Each column that got bids
goes to its highest bidder (ties to the lowest row), takes that bid as its price and evicts its previous
owner, which bids again later. Every bid raises a price by at least ``eps``, so a phase ends once every row
holds a column, every row eps-happy. Epsilon scaling divides ``eps`` by ``scale`` between phases, keeps the
prices (shifted so the lowest is 0) and keeps every pair that is still happy under the new ``eps``.

Exactness bound. At the end every row is eps_final-happy, so the prices certify that the permutation costs
at most ``b * eps_final`` more than the optimum. Float costs: the default ``eps_final`` is
``max|cost| * finfo(cost.dtype).eps / b`` (one last-place unit of the largest entry, shared among the b
rows), raised to at least ``spread * 2**-40`` so float64 prices always move. Integer costs (an integer
dtype, or ``quantize``) are multiplied by ``b + 1`` and solved with integer-valued ``eps`` down to 1: the
gap is then below ``b < b + 1``, one unit of the scaled cost, so the result is exactly optimal. All
arithmetic is float64 and stays integral in that mode (exact while ``4 * (b + 1) * max|cost| < 2**53``).

Design. One Triton program solves one problem, all phases and rounds in one loop inside the kernel: the
column prices and owners and a per-row "assigned" flag are ``[BLOCK]`` register vectors (``BLOCK``, a power
of two >= b); a round gathers its bidders' cost rows from global memory (the matrix stays in L2), and every
gather or scatter between row, column and bidder indices is a one-hot ``[bidders, BLOCK]`` reduction, so
nothing needs shared scratch or barriers. The host neither waits nor reads anything: a problem that did not
finish within ``max_rounds`` rounds gets -1s, which the caller's validation refuses. CUDA tensors run the
compiled kernel; CPU tensors run the same kernel through Triton's interpreter (slow, for tests).
"""

from types import SimpleNamespace
from typing import Annotated

import numpy as np
import torch

from natkit.errors import ConfigError
from natkit.solvers.base import Solver, quantized_costs
from natkit.values import Bounds

tl = None  # triton.language, bound by _kernel() on first use so CPU-only installs can import natkit
_KERNELS: dict = {}
PRICE_RESOLUTION = 2.0**-40  # smallest eps relative to the spread: float64 prices still move by it
MAX_QUANTIZE = 2**31 - 1  # as HungarianSolver


def _triton():
    """Import triton or raise a one-line ImportError naming it."""
    try:
        import triton
    except ImportError:
        raise ImportError("the auction solver needs triton (pip install triton)") from None
    return triton


def _kernel():
    """The jitted kernel, built on first use."""
    if "jit" in _KERNELS:
        return _KERNELS["jit"]
    global tl
    triton = _triton()
    import triton.language as language

    tl = language

    @triton.jit
    def auction_kernel(cost_ptr, perm_ptr, stats_ptr, b, mult, unit, eps_arg, scale, max_rounds,
                       INTEGER: tl.constexpr, BLOCK: tl.constexpr, K: tl.constexpr, R: tl.constexpr):
        NEG = float("-inf")
        pid = tl.program_id(0)
        base = cost_ptr + pid.to(tl.int64) * b * b
        cols = tl.arange(0, BLOCK)  # column indices, and row indices for row-indexed vectors
        col_ok = cols < b
        ks = tl.arange(0, K)
        rs = tl.arange(0, R)  # the full-matrix scans take R rows at a time, bidding rounds K
        # the float arguments arrive as float32 (compiled) or Python floats (interpreter)
        zero = tl.zeros([], tl.float64)
        mult64 = zero + mult
        # range of the benefit, in one pass over the matrix, for the first eps and the default eps_final
        hi_v = tl.full([BLOCK], NEG, tl.float64)
        lo_v = tl.full([BLOCK], -NEG, tl.float64)
        for r0 in range(0, b, R):
            rows = r0 + rs
            m = (rows < b)[:, None] & col_ok[None, :]
            a = -(tl.load(base + rows[:, None].to(tl.int64) * b + cols[None, :], mask=m, other=0.0)
                  .to(tl.float64) * mult64)
            hi_v = tl.maximum(hi_v, tl.max(tl.where(m, a, NEG), axis=0))
            lo_v = tl.minimum(lo_v, tl.min(tl.where(m, a, -NEG), axis=0))
        hi = tl.max(hi_v, axis=0)
        lo = tl.min(lo_v, axis=0)
        spread = hi - lo
        scale64 = zero + scale
        if INTEGER:
            eps_final = spread * 0.0 + 1.0
            eps = tl.maximum((spread / scale64).to(tl.int64).to(tl.float64), eps_final)
        else:
            eps_final = tl.maximum(hi, -lo) * (zero + unit) / b
            eps_final = tl.where(eps_arg > 0, zero + eps_arg, eps_final)
            eps_final = tl.maximum(eps_final, spread * 2.0**-40)
            eps = tl.maximum(spread / scale64, eps_final)
        trivial = spread == 0  # every permutation is optimal: the identity, no phase at all
        eps = tl.where(trivial, eps_final, eps)
        price = tl.zeros([BLOCK], tl.float64)
        # owner[j]: the row holding column j, -1 if free, -2 for padding; assigned[i]: row i holds a column
        owner = tl.where(col_ok, tl.where(trivial, cols, -1), -2)
        assigned = tl.where(col_ok, trivial.to(tl.int32), 1)
        n_free = tl.sum(1 - assigned, axis=0)
        rounds = n_free * 0
        phases = rounds + 1
        while ((n_free > 0) | (eps > eps_final)) & (rounds < max_rounds):
            if n_free > 0:
                # the K lowest free rows bid; bidder[k] is the k-th free row (rank by prefix sum)
                free = 1 - assigned
                rank = tl.cumsum(free, axis=0) - 1
                pick = (free[None, :] == 1) & (rank[None, :] == ks[:, None])
                bidder = tl.sum(tl.where(pick, cols[None, :], 0), axis=1)
                valid = ks < n_free
                m = valid[:, None] & col_ok[None, :]
                c = tl.load(base + bidder[:, None].to(tl.int64) * b + cols[None, :], mask=m, other=0.0)
                # padding bidders (k >= n_free) read zeros and bid finite nonsense, ignored below
                v = tl.where(col_ok[None, :], -(c.to(tl.float64) * mult64) - price[None, :], NEG)
                v1 = tl.max(v, axis=1)
                j1 = tl.min(tl.where(v == v1[:, None], cols[None, :], BLOCK), axis=1)
                hit = cols[None, :] == j1[:, None]  # one-hot of each bidder's target column
                v2 = tl.max(tl.where(hit, NEG, v), axis=1)
                p1 = tl.max(tl.where(hit, price[None, :], NEG), axis=1)
                bids = tl.where(hit & valid[:, None], (p1 + (v1 - v2) + eps)[:, None], NEG)
                best = tl.max(bids, axis=0)
                top = (bids == best[None, :]) & (bids > NEG)
                winner = tl.min(tl.where(top, bidder[:, None], BLOCK), axis=0)
                won = winner < BLOCK
                # back in bidder space: who won its target, and whom it evicted (-1: the column was free)
                won_k = valid & (tl.max(tl.where(hit, winner[None, :], -1), axis=1) == bidder)
                evicted = tl.where(won_k, tl.max(tl.where(hit, owner[None, :], -1), axis=1), -1)
                owner = tl.where(won, winner, owner)
                price = tl.where(won, best, price)
                gain = tl.max(tl.where((bidder[:, None] == cols[None, :]) & won_k[:, None], 1, 0), axis=0)
                loss = tl.max(tl.where(evicted[:, None] == cols[None, :], 1, 0), axis=0)
                assigned = tl.where(loss > 0, 0, tl.maximum(assigned, gain))
                n_free = tl.sum(1 - assigned, axis=0)
                rounds += 1
            else:
                # next phase: smaller eps; keep prices (shifted, for float64 resolution) and happy pairs
                if INTEGER:
                    eps = tl.maximum((eps / scale64).to(tl.int64).to(tl.float64), eps_final)
                else:
                    eps = tl.maximum(eps / scale64, eps_final)
                price = price - tl.min(tl.where(col_ok, price, -NEG), axis=0)
                phases += 1
                for r0 in range(0, b, R):
                    rows = r0 + rs
                    rm = rows < b
                    m = rm[:, None] & col_ok[None, :]
                    c = tl.load(base + rows[:, None].to(tl.int64) * b + cols[None, :], mask=m, other=0.0)
                    v = tl.where(m, -(c.to(tl.float64) * mult64) - price[None, :], NEG)
                    own = (owner[None, :] == rows[:, None]) & rm[:, None]
                    v_own = tl.max(tl.where(own, v, NEG), axis=1)
                    drop = rm & (v_own < tl.max(v, axis=1) - eps)
                    owner = tl.where(tl.max(tl.where(own & drop[:, None], 1, 0), axis=0) > 0, -1, owner)
                    lose = tl.max(tl.where((rows[:, None] == cols[None, :]) & drop[:, None], 1, 0), axis=0)
                    assigned = tl.where(lose > 0, 0, assigned)
                n_free = tl.sum(1 - assigned, axis=0)
        ok = (n_free == 0) & (eps <= eps_final)
        if INTEGER:  # prices stay below 4 * max|benefit|: float64 holds them exactly under 2**53
            ok = ok & (tl.maximum(hi, -lo) < 2.0**51)
        # perm[owner[j]] = j; a problem that ran out of rounds gets -1 in every row instead
        tl.store(perm_ptr + pid.to(tl.int64) * b + tl.where(ok, owner, cols),
                 tl.where(ok, cols, -1).to(tl.int64), mask=col_ok)
        tl.store(stats_ptr + pid * 2, rounds)
        tl.store(stats_ptr + pid * 2 + 1, phases)

    _KERNELS["jit"] = auction_kernel
    return auction_kernel


def _interpret(kernel, grid, args, consts) -> None:
    """Run a jitted kernel through Triton's interpreter, without setting TRITON_INTERPRET for the process.

    Outside interpreter mode triton.language's own helpers (tl.max, tl.sum, tl.zeros, ...) are compiled-only
    JITFunctions; while the kernel runs, calling any JITFunction runs it interpreted instead.
    """
    import triton.language as language
    from triton.runtime.interpreter import InterpretedFunction, _patch_lang
    from triton.runtime.jit import JITFunction

    interpreted: dict = {}

    def call(self, *a, **kw):
        # keyed by id: hashing a JITFunction walks its source, which fails while the language is patched;
        # the rewritten function is called directly, as the language is patched once for the whole run
        if id(self) not in interpreted:
            interpreted[id(self)] = InterpretedFunction(self.fn).rewrite()
        return interpreted[id(self)](*a, **kw)

    original = JITFunction.__call__
    # nested interpreted calls patch triton.language.core and never undo it; this scope saves the originals
    # first and restores them, or a later compile in this process would meet interpreter stubs
    scope = _patch_lang(SimpleNamespace(__globals__={"tl": language, "core": language.core}))
    JITFunction.__call__ = call
    try:
        InterpretedFunction(kernel.fn)[grid](*args, **consts)
    finally:
        JITFunction.__call__ = original
        scope.restore()


def launch_config(b: int, bidders: int | None = None, num_warps: int | None = None) -> tuple[int, ...]:
    """``(BLOCK, K, R, num_warps)`` for size b: K bidders a round, R rows a scan step."""
    block = 1 << max(b - 1, 1).bit_length()
    # 16 bidders take fewer rounds than 4 or 8 at b = 256 (interpreter counts: 850, 2527, 1155); the
    # defaults keep a [K, BLOCK] float64 tile at 32 values a thread, which ptxas holds without spilling
    bidders = bidders or max(1, min(16, 16384 // block))
    num_warps = num_warps or min(8, max(1, bidders * block // 1024))  # 8 warps: 255 registers a thread
    for name, value in (("bidders", bidders), ("num_warps", num_warps)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two, got {value}")
    bidders = min(bidders, block)
    return block, bidders, min(block, max(bidders, 1024 * num_warps // block)), num_warps


def _float32_at_most(x: float) -> float:
    """The largest float32 not above x (Triton passes float arguments as float32)."""
    f = np.float32(x)
    return float(np.nextafter(f, np.float32(0)) if float(f) > x else f)


def solve_batch(costs: torch.Tensor, *, quantize: int | None = None, eps_final: float | None = None,
                scale: float = 5.0, max_rounds: int = 100_000, bidders: int | None = None,
                num_warps: int | None = None, stats: torch.Tensor | None = None) -> torch.Tensor:
    """Solve ``costs[k, b, b]`` with one kernel launch: int64 ``perms[k, b]``, -1s where out of rounds."""
    if costs.ndim != 3 or costs.shape[1] != costs.shape[2]:
        raise ValueError(f"costs must be [k, b, b], got shape {tuple(costs.shape)}")
    if not scale > 1:
        raise ValueError(f"scale must exceed 1, got {scale}")
    if eps_final is not None and not eps_final > 0:
        raise ValueError(f"eps_final must be positive, got {eps_final}")
    k, b = costs.shape[0], costs.shape[1]
    _triton()  # missing triton fails here, in one line, whatever the size
    if b <= 1 or k == 0:
        return torch.zeros(k, b, dtype=torch.int64, device=costs.device)
    integer = bool(quantize) or not costs.is_floating_point()  # integer and bool dtypes: exactly
    if quantize:
        if not 0 < quantize <= MAX_QUANTIZE:
            raise ValueError(f"quantize must be between 0 and {MAX_QUANTIZE}, got {quantize}")
        values, top = quantized_costs(costs, quantize), quantize
    elif integer:  # the kernel refuses (-1s) values too large for exact float64 prices
        values, top = costs.detach().to(torch.float64), 0
    else:
        values = costs.detach()
        values = values if values.dtype in (torch.float32, torch.float64) else values.float()
    if integer and 4 * (b + 1) * top >= 2**53:
        raise ValueError(f"integer costs up to {top} at b={b} are too large for exact float64 prices")
    values = values.contiguous()
    unit = 0.0 if integer else torch.finfo(costs.dtype).eps
    perms = torch.empty(k, b, dtype=torch.int64, device=costs.device)
    if stats is None:
        stats = torch.empty(k, 2, dtype=torch.int32, device=costs.device)
    args = (values, perms, stats, b, float(b + 1 if integer else 1), unit,
            _float32_at_most(eps_final) if eps_final and not integer else 0.0,
            float(scale), int(max_rounds))
    block, bidders, rows, num_warps = launch_config(b, bidders, num_warps)
    consts = dict(INTEGER=integer, BLOCK=block, K=bidders, R=rows)
    if costs.device.type == "cuda":
        with torch.cuda.device(costs.device):
            _kernel()[(k,)](*args, **consts, num_warps=num_warps)
    else:
        _interpret(_kernel(), (k,), args, consts)
    return perms


class AuctionSolver(Solver):
    """Exact (integer costs) or within ``b * eps_final`` (float costs): the fused Triton auction."""

    exact = True
    native_devices = ("cuda",)  # the CPU runs the kernel through Triton's slow interpreter

    def __init__(self, quantize: int | None = None, eps_final: float | None = None, scale: float = 5.0,
                 max_rounds: int = 100_000) -> None:
        if quantize is not None and not 0 <= quantize <= MAX_QUANTIZE:
            raise ValueError(f"quantize must be between 0 and {MAX_QUANTIZE}, got {quantize}")
        self.quantize = quantize or None
        self.eps_final = eps_final
        self.scale = scale
        self.max_rounds = max_rounds

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        """Solve one checked cost matrix; -1s (refused by the caller) if it ran out of rounds."""
        return solve_batch(cost[None], quantize=self.quantize, eps_final=self.eps_final, scale=self.scale,
                           max_rounds=self.max_rounds)[0]


def create(*, quantize: Annotated[int | None, Bounds(ge=0, le=MAX_QUANTIZE)] = None,
           eps_final: Annotated[float | None, Bounds(gt=0)] = None,
           scale: Annotated[float, Bounds(gt=1)] = 5.0,
           max_rounds: Annotated[int, Bounds(ge=1)] = 100_000) -> AuctionSolver:
    """Exact assignment by an epsilon-scaled auction in one Triton kernel (needs triton).

    Args:
        quantize: solve integer costs 0..quantize exactly, made as hungarian's quantize makes
            them (hungarian.lua's rescaling by minimum and maximum, truncated); null or 0
            solves the cost as it is.
        eps_final: the last phase's eps for float costs: the answer is within b * eps_final
            of the optimum; null picks one last-place unit of the largest cost entry over b.
        scale: the factor eps shrinks by from one phase to the next.
        max_rounds: bidding rounds allowed before the solve gives up (and the run stops).
    """
    try:  # a run that cannot solve is refused at its start, not at its first reassignment
        _triton()
    except ImportError as exc:
        raise ConfigError(f"solver 'auction': {exc}; it comes with PyTorch's CUDA builds") from None
    return AuctionSolver(quantize, eps_final, scale, max_rounds)
