"""The speed suite as markdown tables and a figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt

from benchmarks.distributed import distributed_markdown
from benchmarks.markdown import ms, ratio, size, table
from benchmarks.results_page import SPEED_HEADING
from benchmarks.speed.memory import IMAGENET_TRAIN, MemoryRow
from benchmarks.speed.profile import profile_markdown
from benchmarks.speed.solvers import SolverTiming
from benchmarks.speed.steps import StepTiming, SwitchTiming
from benchmarks.speed.suite import SpeedResult
from benchmarks.timing import describe
from natkit.assignment import CPU_CACHE_LIMIT_MB


def _solver_lines(cells: tuple[SolverTiming, ...]) -> list[str]:
    """The time and gap tables, one column per solver and one row per b."""
    names = list(dict.fromkeys(c.solver for c in cells))
    sizes = sorted({c.b for c in cells})
    cell = {(c.solver, c.b): c for c in cells}
    kind = {n: "exact" if any(c.exact for c in cells if c.solver == n) else "approx."
            for n in names}
    header = ["b", *(f"{n} ({kind[n]})" for n in names)]

    def time_cell(c: SolverTiming | None) -> str:
        if c is None:
            return "-"
        if c.status == "skipped":
            return f"skipped (est. {c.estimate_s:.3g} s a solve)"
        if c.status == "error":
            return "error"
        return f"{ms(c.seconds)} ({ratio(c.ratio_to_hungarian)})"

    def gap_cell(c: SolverTiming | None) -> str:
        if c is None or c.status != "ok":
            return "-"
        return "0" if abs(c.gap_pct) < 1e-9 else f"{c.gap_pct:.3g}"

    lines = ["Solve time in ms, median over repeats (in brackets: the ratio to scipy's hungarian "
             "at the same b):", ""]
    lines += table(header, [[str(b), *(time_cell(cell.get((n, b))) for n in names)] for b in sizes])
    lines += ["", "Optimality gap, % above scipy's optimum on the same cost matrix:", ""]
    lines += table(header, [[str(b), *(gap_cell(cell.get((n, b))) for n in names)] for b in sizes])
    errors = [c for c in cells if c.status == "error"]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {c.solver} at b = {c.b}: {c.error}" for c in errors]
    return lines


def _step_lines(step: StepTiming) -> list[str]:
    """The step table and the solver's share of the step."""
    k = step.permute_every
    med, ips, ratios, spread = step.median_s, step.images_per_s, step.ratios, step.iqr_s

    def row(label: str, case: str) -> list[str]:
        return [label, ms(med[case]), ms(spread[case]) if case in spread else "-",
                f"{ips[case]:,.0f}", f"{ratios.get(case, 1.0):.3f}"]

    rows = [row("supervised", "supervised"), row("NAT, reassignment epoch", "nat_reassign"),
            row("NAT, other epochs", "nat_fixed"),
            [f"NAT, averaged over a {k}-epoch period", ms(step.period_s), "-",
             f"{step.batch_size / step.period_s:,.0f}", f"{ratios['period']:.3f}"]]
    overhead = step.reassign_overhead_s
    noise = max(spread.get("nat_reassign", 0.0), spread.get("nat_fixed", 0.0))
    return [
        *table(["step", "median ms", "IQR ms", "images/s", "ratio to supervised"], rows), "",
        f"The solver ({step.solver}) takes {ms(step.solver_s)} ms per reassignment step: "
        f"{step.solver_share:.1%} of that step, {step.solver_share_period:.1%} of the time "
        f"averaged over a permutation period. The median step with reassignment minus the median "
        f"step without: {ms(overhead)} ms"
        + (" (smaller than the steps' spread, so the solver's own timing is the better measure)."
           if abs(overhead) < noise else "."),
    ]


def _step_section(step: StepTiming) -> list[str]:
    """One configuration's step: what ran where, then its table."""
    bb = step.backbone
    where = "batches already on the device" if step.on_device else "batches loaded beforehand"
    return [f"**{step.label or 'step'}**: Run.train_step at batch {step.batch_size}, "
            f"{bb['name']} (widths {bb.get('widths')}) on {step.dataset} at "
            f"{step.image_size} px, solver {step.solver}, on {step.device} ({where}); "
            f"median over {step.steps} interleaved rounds of {step.block} "
            f"step(s) per case after {step.warmup} warm-up rounds.", "",
            *_step_lines(step), ""]


def _memory_lines(rows: tuple[MemoryRow, ...]) -> list[str]:
    """The memory table: P, a cached bank, and regenerating instead."""
    body = []
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r.options.items() if k not in ("dim", "seed"))
        body.append([
            r.targets + (f" ({options})" if options else ""), str(r.dim),
            size(r.perm_bytes_measured), size(r.cached_bytes), size(r.regenerated_bytes),
            f"{ms(r.regen_s)} ms", f"{r.regen_epoch_s:.3g} s",
            "yes" if r.cached_under_default_limit else "no",
        ])
    n = rows[0].n if rows else IMAGENET_TRAIN
    limit = rows[0].default_limit_mb if rows else CPU_CACHE_LIMIT_MB
    batch = rows[0].regen_batch if rows else 256
    header = ["targets", "dim", "P (measured)", "cached: P + bank", f"regenerated: P + {batch} targets",
              f"regenerate {batch}", f"per epoch (n / {batch} batches)",
              f"cached by default (<= {limit:g} MB)"]
    return [f"n = {n:,} images; P is {rows[0].perm_dtype if rows else 'int64'}, targets float32.",
            "", *table(header, body), "",
            "'P (measured)' is the storage of AssignmentState.perm built at this n with a cache "
            "limit of 0 MB; 'per epoch' is one regeneration per batch (a reassignment epoch "
            "regenerates twice: once for the solve, once for the loss)."]


def _switch_lines(rows: tuple[SwitchTiming, ...]) -> list[str]:
    """The speed switches' table."""
    body = [[r.switches, ms(r.median_s), ms(r.iqr_s), f"{r.images_per_s:,.0f}", f"{r.speedup:.2f}×"]
            for r in rows]
    return ["A NAT step without reassignment (AlexNet at 224 px, batch 256, d = 2048), batches "
            "already on the device; median per step over blocks of 5 steps. Each switch is "
            "a train.* option (amp, channels_last, compile).", "",
            *table(["switches", "median ms", "IQR ms", "images/s", "speed-up"], body)]


def speed_markdown(results: SpeedResult) -> str:
    """The suite as markdown: solver, step and memory tables, and what was measured where."""
    lines = [SPEED_HEADING, ""]
    if results.solvers:
        first = results.solvers[0]
        lines += ["#### Assignment solvers", "",
                  f"NAT cost -F C^T (unit-norm Gaussian features, sphere targets, d = {first.dim}, "
                  f"float32 on {first.device}).", "", *_solver_lines(results.solvers), ""]
    if results.steps:
        lines += ["#### Training step: NAT against supervised", ""]
    for step in results.steps:
        lines += _step_section(step)
    if results.profiles:
        lines += [profile_markdown(results.profiles)]
    if results.memory:
        lines += ["#### Assignment memory at ImageNet scale", "", *_memory_lines(results.memory), ""]
    if results.switches:
        lines += ["#### Speed switches on the paper configuration", "",
                  *_switch_lines(results.switches), ""]
    if results.distributed:
        lines += [distributed_markdown(results.distributed)]
    lines += ["#### What was measured", "", _statement(results), ""]
    return "\n".join(lines)


def _statement(results: SpeedResult) -> str:
    """One plain paragraph: what was timed, how, and on which machine."""
    s = results.settings.get("solver_speed", {})
    text = (f"Measured on {describe(results.machine)}"
            f"{' in quick (smoke) mode, with tiny sizes' if results.quick else ''}. "
            f"Solver times are medians of up to {s.get('repeats', '?')} solves after one warm-up "
            f"call, timed with time.perf_counter around the solver call (the device-to-host copy "
            f"included); a (solver, b) cell whose extrapolated time would exceed "
            f"{s.get('budget_s', '?')} s is skipped. Gaps are measured against scipy's optimum "
            f"on the same matrix. Step times are medians of Run.train_step on real batches, the "
            f"three cases interleaved round by round, each timing a block of consecutive steps "
            f"between two device synchronisations; the solver's share is its own call, timed in "
            f"separate reassignment steps so that its timing adds no synchronisation to the "
            f"steps above. Ratios come from one process and carry over to other machines "
            f"far better than the absolute times, which describe this machine only.")
    if results.seconds.get("total"):
        text += f" The suite took {results.seconds['total']:.0f} s."
    return text


def plot_solver_speed(results: SpeedResult, path: str | Path) -> None:
    """Solve time against b on log-log axes, and the optimality gap beside it, as a PNG."""
    cells = [c for c in results.solvers if c.status == "ok"]
    fig, (ax_t, ax_g) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(c.solver for c in cells):
        mine = sorted((c for c in cells if c.solver == name), key=lambda c: c.b)
        style = "o-" if mine[0].exact else "s--"
        sizes = [c.b for c in mine]
        ax_t.plot(sizes, [c.seconds * 1e3 for c in mine], style, label=name)
        ax_g.plot(sizes, [max(c.gap_pct, 0.0) for c in mine], style, label=name)
    ax_t.set_xscale("log", base=2)
    ax_t.set_yscale("log")
    ax_t.set_xlabel("batch size b")
    ax_t.set_ylabel("solve time (ms, median)")
    ax_t.set_title("solve time")
    ax_t.grid(True, which="both", alpha=0.3)
    ax_g.set_xscale("log", base=2)
    ax_g.set_xlabel("batch size b")
    ax_g.set_ylabel("% above scipy's optimum")
    ax_g.set_title("optimality gap (exact solvers: 0)")
    ax_g.grid(True, alpha=0.3)
    for ax in (ax_t, ax_g):
        if cells:
            ax.legend(fontsize=8)
    where = results.machine.cpu + (f" + {results.machine.cuda}" if results.machine.cuda else "")
    fig.suptitle(f"NAT assignment solvers on {where}", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
