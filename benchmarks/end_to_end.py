"""The paper preset's training pace from each data path, against its pace from memory.

``python -m benchmarks.end_to_end --device cuda --images 20000 --out DIR`` writes a
generated ImageNet-like folder (photograph-like JPEGs of about 500 x 375 in class
folders, by every core), writes it as JPEG shards and as raw shards at 256 px,
then trains ``--preset paper`` for ``--steps`` steps on each data path, in a fresh
process each with its own time limit, and times steps ``--warmup..--steps`` with
the ``on_step_end`` hook (as :mod:`benchmarks.paper_smoke` does):

* memory: raw shards held in memory (``data.cache=true``, no workers): the GPU's own pace;
* folder, CPU decode (today's path) and folder, nvJPEG (``data.decode=gpu``);
* JPEG shards, CPU decode and JPEG shards, nvJPEG; raw shards (nothing to decode);

each in fp32 and in amp + channels_last. It also measures the pixel difference
between nvJPEG and natkit's CPU decoder on the same files, and between the JPEG
shards' records and the folder's pixels. end_to_end.json and end_to_end.md go to
``--out``; the tables are printed last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.markdown import size

SIZE = 256  # the paper preset's data.image_size, the shards' side
MARK_EVERY = 10  # steps between the child's partial marks: a timed-out run still has a rate
PRECISIONS: dict[str, list[str]] = {"fp32": [],
                                    "amp": ["train.amp=true", "train.channels_last=true"]}
# name -> (data source, decode, uses workers, extra data overrides)
PATHS: dict[str, tuple[str, str, bool, list[str]]] = {
    "memory": ("raw", "cpu", False, ["data.name=shards", "data.cache=true"]),
    "folder, CPU decode": ("folder", "cpu", True, ["data.name=imagefolder", "data.cache=false"]),
    "folder, nvJPEG": ("folder", "gpu", True, ["data.name=imagefolder", "data.cache=false"]),
    "JPEG shards, CPU decode": ("jpeg", "cpu", True, ["data.name=shards", "data.cache=false"]),
    "JPEG shards, nvJPEG": ("jpeg", "gpu", True, ["data.name=shards", "data.cache=false"]),
    "raw shards": ("raw", "cpu", True, ["data.name=shards", "data.cache=false"]),
}


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def _child(spec: dict[str, Any]) -> None:
    """Train the preset in this process; print a mark at the warm-up and every few steps."""
    import torch
    from rich.console import Console

    from natkit import config as cfg
    from natkit import lifecycle, presets
    from natkit.hookspecs import hookimpl
    from natkit.plugins import get_host

    steps, warmup = spec["steps"], spec["warmup"]
    config = cfg.build(overrides=[
        *presets.as_overrides("paper"), *spec["data"], f"data.root={spec['root']}",
        f"data.decode={spec['decode']}", f"train.batch_size={spec['batch_size']}",
        f"train.num_workers={spec['workers']}", "train.epochs=1000", f"device={spec['device']}",
        "eval.enabled=false", *spec["overrides"]])
    start = time.perf_counter()

    class Clock:
        @hookimpl
        def on_step_end(self, run: Any, metrics: dict[str, Any]) -> None:
            step = run.step
            if step in (warmup, steps) or (step > warmup and (step - warmup) % MARK_EVERY == 0):
                if run.device.type == "cuda":
                    torch.cuda.synchronize(run.device)
                _emit({"mark": step, "t": time.perf_counter() - start})
            if step >= steps:
                run.request_stop()

    get_host().register(Clock(), name="end-to-end-clock")
    with tempfile.TemporaryDirectory(prefix="natkit-e2e-") as tmp:
        run = lifecycle.start(config, Path(tmp) / "run", console=Console(stderr=True, quiet=True))
        _emit({"started": time.perf_counter() - start})
        lifecycle.execute(run, evaluate=False)
        cuda = run.device.type == "cuda"
        _emit({"done": run.step, "peak_gpu_mib": round(torch.cuda.max_memory_allocated(run.device)
                                                       / 2**20) if cuda else None})


def rate_from_marks(marks: dict[int, float], warmup: int, batch_size: int) -> dict[str, Any]:
    """Steps/s and images/s from the warm-up mark to the last one (empty when there are none)."""
    last = max(marks, default=warmup)
    if warmup not in marks or last <= warmup:
        return {}
    steps_per_s = (last - warmup) / (marks[last] - marks[warmup])
    return {"steps_timed": last - warmup, "steps_per_s": steps_per_s,
            "images_per_s": steps_per_s * batch_size}


def run_one(spec: dict[str, Any], limit: float) -> dict[str, Any]:
    """One configuration in a fresh process, killed (with its workers) after ``limit`` seconds."""
    args = [sys.executable, "-m", "benchmarks.end_to_end", "--child", json.dumps(spec)]
    env = {**os.environ, "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    # its own session: a time-out ends the loader workers too, not only the trainer
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = "timed out"
    finally:  # this benchmark stopped (SIGTERM, Ctrl-C): no trainer left holding the GPU
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    marks: dict[int, float] = {}
    result: dict[str, Any] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if "mark" in item:
            marks[item["mark"]] = item["t"]
        elif "started" in item:
            result["startup_s"] = round(item["started"], 1)
        elif "peak_gpu_mib" in item:
            result["peak_gpu_mib"] = item["peak_gpu_mib"]
    result.update(rate_from_marks(marks, spec["warmup"], spec["batch_size"]))
    if status == "ok" and result.get("steps_timed") != spec["steps"] - spec["warmup"]:
        status = result["status"] = "failed"
    if status == "timed out":
        result["error"] = (f"killed at its {limit:.0f} s limit after "
                           f"{result.get('steps_timed', 0)} timed steps")
    elif status != "ok":
        tail = [line for line in err.strip().splitlines() if line.strip()]
        result["error"] = (tail[-1] if tail else f"exit {proc.returncode}")[-300:]
    return result


def prepare(data: Path, images: int, workers: int, classes: int) -> dict[str, Any]:
    """The folder, the JPEG shards and the raw shards under ``data``, each timed."""
    from benchmarks.photos import write_photo_folder

    folder = data / "folder"
    times: dict[str, Any] = {"workers": workers}
    if not folder.is_dir() or sum(1 for _ in folder.rglob("*.jpg")) != images:
        start = time.perf_counter()
        write_photo_folder(folder, images, classes=classes, workers=workers)
        times["folder_s"] = round(time.perf_counter() - start, 2)
    from natkit.datasets.shard_writer import write_shards

    for encoding in ("jpeg", "raw"):
        written = write_shards(folder, data / f"shards-{encoding}", size=SIZE, encoding=encoding,
                               workers=workers, force=True)
        times[f"{encoding}_shards_s"] = round(written.seconds, 2)
        times[f"{encoding}_shards_bytes"] = sum(s.bytes for s in written.splits)
    files = list(folder.rglob("*.jpg"))
    times["folder_bytes"] = sum(p.stat().st_size for p in files)
    times["images"] = len(files)
    return times


def _diff(a: Any, b: Any) -> dict[str, float]:
    d = (a.int() - b.int()).abs().float()
    return {"mean": round(float(d.mean()), 3), "max": float(d.max())}


def pixel_differences(data: Path, decode_on: str | None, count: int = 64) -> dict[str, Any]:
    """nvJPEG on ``decode_on`` (None: skipped) against the CPU decoder, and JPEG-shard records
    against the folder, at 256 px."""
    import torch

    from natkit.datasets import imagefolder, shards

    folder = imagefolder.create(root=str(data / "folder"), image_size=SIZE, cache=False)
    records = shards.create(root=str(data / "shards-jpeg"), cache=False)
    idx = torch.arange(min(count, len(folder)))
    cpu_folder, cpu_records = folder.raw_batch(idx), records.raw_batch(idx)
    out: dict[str, Any] = {"images": len(idx),
                           "shard_record_vs_folder": _diff(cpu_records, cpu_folder)}
    if decode_on is None:
        out["nvjpeg"] = "skipped: needs CUDA"
        return out
    cuda = torch.device(decode_on)
    gpu_folder = imagefolder.create(root=str(data / "folder"), image_size=SIZE, cache=False,
                                    decode="gpu")
    gpu_records = shards.create(root=str(data / "shards-jpeg"), cache=False, decode="gpu")
    out["nvjpeg_vs_cpu_folder"] = _diff(
        gpu_folder.decode_raw(gpu_folder.raw_batch(idx), cuda).cpu(), cpu_folder)
    out["nvjpeg_vs_cpu_shards"] = _diff(
        gpu_records.decode_raw(gpu_records.raw_batch(idx), cuda).cpu(), cpu_records)
    return out


def fractions(runs: list[dict[str, Any]]) -> None:
    """Each run's rate over its precision's from-memory rate (None where either is missing)."""
    memory = {r["precision"]: r.get("steps_per_s") for r in runs
              if r["path"] == "memory" and r["status"] == "ok"}
    for r in runs:
        base, rate = memory.get(r["precision"]), r.get("steps_per_s")
        # a run cut short counts if it timed more steps than its workers had ready
        loader_timed = r["status"] == "ok" or r.get("steps_timed", 0) > 2 * r["workers"]
        r["fraction_of_memory"] = rate / base if base and rate and loader_timed else None


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The runs as one table per precision, then the preparation and the pixel differences."""
    s = result["settings"]
    lines = [f"### The paper preset end to end ({result['device']}, {s['cores']} cores)", "",
             f"Batch {s['batch_size']}, steps {s['warmup']}..{s['steps']} timed, "
             f"{result['preparation'].get('images', '?')} generated JPEGs of about 500 x 375.", ""]
    for precision in PRECISIONS:
        lines += [f"#### {precision}", "",
                  "| path | workers | decode | steps/s | images/s | of memory | status |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["runs"]:
            if r["precision"] == precision:
                lines.append(f"| {r['path']} | {r['workers']} | {r['decode']} | "
                             f"{_num(r.get('steps_per_s'), 2)} | {_num(r.get('images_per_s'), 0)} | "
                             f"{_num(r.get('fraction_of_memory'), 2)} | {r['status']} |")
        lines.append("")
    failed = [r for r in result["runs"] if r.get("error")]
    if failed:
        lines += ["Failures:", "", *(f"- {r['path']}, {r['precision']}: {r['status']}: "
                                    f"{r['error']}" for r in failed), ""]
    p = result["preparation"]
    lines += ["#### Preparation", "", "| step | seconds | bytes |", "|---|---|---|",
              f"| folder ({p['workers']} processes) | {_num(p.get('folder_s'), 1)} | "
              f"{size(p['folder_bytes'])} |"]
    for encoding in ("jpeg", "raw"):
        lines.append(f"| {encoding} shards | {_num(p.get(f'{encoding}_shards_s'), 1)} | "
                     f"{size(p[f'{encoding}_shards_bytes'])} |")
    lines += ["", "#### Pixel differences (0..255, at 256 px)", "",
              "| comparison | mean | max |", "|---|---|---|"]
    for name, d in result["pixels"].items():
        if isinstance(d, dict):
            lines.append(f"| {name} | {d['mean']:.3f} | {d['max']:.0f} |")
        elif name != "images":
            lines.append(f"| {name} | {d} | |")
    return "\n".join(lines) + "\n"


def _budget(started: float, budget_s: float, run_limit: float, reserve: float) -> float:
    return min(run_limit, budget_s - reserve - (time.perf_counter() - started))


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cuda",
    images: Annotated[int, typer.Option(help="JPEGs to generate (a fifth held out)")] = 20000,
    out: Annotated[Path, typer.Option(help="folder for end_to_end.json and .md")] = Path(
        "benchmarks/results/end-to-end"),
    data: Annotated[Path | None, typer.Option(help="keep (or reuse) the generated data here")] = None,
    steps: Annotated[int, typer.Option(help="steps per run, the last one timed")] = 50,
    warmup: Annotated[int, typer.Option(help="steps before the clock starts")] = 10,
    batch_size: Annotated[int, typer.Option(help="the preset's 256")] = 256,
    workers: Annotated[int, typer.Option(help="loader workers of the disk paths")] = 16,
    prep_workers: Annotated[int | None, typer.Option(help="processes writing the data "
                                                          "[default: every core]")] = None,
    classes: Annotated[int, typer.Option(help="class folders")] = 100,
    run_limit_s: Annotated[float, typer.Option(help="each run's time limit")] = 45.0,
    budget_s: Annotated[float, typer.Option(help="the whole benchmark's time limit")] = 220.0,
    precision: Annotated[list[str] | None, typer.Option(help="fp32, amp (default: both)")] = None,
    path: Annotated[list[str] | None, typer.Option(help="paths to run (default: all)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config overrides, every run")] = None,
    path_set: Annotated[list[str] | None, typer.Option(
        help="PATH=KEY=VALUE: an override for one path's runs")] = None,
    child: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Time the paper preset from memory, the JPEG folder and shards; write the tables."""
    if child is not None:
        _child(json.loads(child))
        return
    started = time.perf_counter()
    # a time limit's SIGTERM unwinds as an exception: the running child is killed on the way
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from natkit.environment import usable_cores as cores

    if warmup < 1 or steps - warmup <= 2 * workers:
        raise typer.BadParameter("need --warmup >= 1 and more timed steps (--steps - --warmup) "
                                 "than the workers prefetch (2 x --workers batches)")
    precisions = precision or list(PRECISIONS)
    paths = path or list(PATHS)
    for name in [*precisions, *paths]:
        if name not in PRECISIONS and name not in PATHS:
            raise typer.BadParameter(f"unknown path or precision '{name}'")
    per_path: dict[str, list[str]] = {}
    for item in path_set or []:
        name, _, override = item.partition("=")
        if name not in PATHS or "=" not in override:
            raise typer.BadParameter(f"--path-set {item}: expected PATH=KEY=VALUE")
        per_path.setdefault(name, []).append(override)
    result: dict[str, Any] = {"device": _device_name(device), "settings": {
        "images": images, "steps": steps, "warmup": warmup, "batch_size": batch_size,
        "workers": workers, "cores": cores(), "run_limit_s": run_limit_s, "budget_s": budget_s,
        "set": set_ or [], "path_set": path_set or []}, "preparation": {}, "runs": [],
        "pixels": {}}
    with tempfile.TemporaryDirectory(prefix="natkit-e2e-data-") as tmp:
        root = (data or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        # the folder's file index goes with the data, not to ~/.cache/natkit
        os.environ.setdefault("NATKIT_CACHE_DIR", str(root / "cache"))
        result["preparation"] = prepare(root, images, prep_workers or cores(), classes)
        print(f"prepared in {time.perf_counter() - started:.0f} s: {result['preparation']}",
              file=sys.stderr)
        runs = result["runs"]
        for name in paths:
            source, decode, uses_workers, overrides = PATHS[name]
            for prec in precisions:
                w = workers if uses_workers else 0
                row: dict[str, Any] = {"path": name, "precision": prec, "workers": w,
                                       "decode": "nvJPEG" if decode == "gpu" else
                                       ("none (raw)" if source == "raw" else "CPU")}
                limit = _budget(started, budget_s, run_limit_s, reserve=10.0)
                if decode == "gpu" and device != "cuda":
                    row["status"] = "skipped: needs CUDA"
                elif limit < 5:
                    row["status"] = "skipped: budget spent"
                else:
                    spec = {"root": str(root / ("folder" if source == "folder" else
                                                f"shards-{source}")),
                            "decode": decode, "workers": w, "batch_size": batch_size,
                            "steps": steps, "warmup": warmup, "device": device, "data": overrides,
                            "overrides": [*PRECISIONS[prec], *(set_ or []),
                                          *per_path.get(name, [])]}
                    row.update(run_one(spec, limit))
                runs.append(row)
                fractions(runs)
                _write(out, result, started)  # a benchmark killed later keeps what it measured
                print(f"{name:24s} {prec:5s} {row['status']:10s} "
                      f"{_num(row.get('steps_per_s'), 2)} steps/s", file=sys.stderr)
        try:
            result["pixels"] = pixel_differences(root, _cuda(device))
        except Exception as exc:  # the runs' numbers are worth more than this comparison
            result["pixels"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print(_write(out, result, started))


def _write(out: Path, result: dict[str, Any], started: float) -> str:
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (out / "end_to_end.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "end_to_end.md").write_text(text)
    return text


def _cuda(device: str) -> str | None:
    import torch

    return "cuda" if device == "cuda" and torch.cuda.is_available() else None


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return device


if __name__ == "__main__":
    app()
