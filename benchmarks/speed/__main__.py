"""``python -m benchmarks.speed [--quick] [--out DIR] [--device D]``: the speed suite alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.speed.profile import profile_markdown
from benchmarks.speed.report import plot_solver_speed, speed_markdown
from benchmarks.speed.suite import run_session, run_speed


def main(argv: list[str] | None = None) -> None:
    """Run the suite, print its markdown, and write speed.md, speed.json and speed.png to --out."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed",
                                     description="natkit's speed suite: solvers, step, memory.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, under a minute (smoke)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for speed.md, speed.json and speed.png")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu or cuda[:N]; on CUDA the paper configuration's step is timed too")
    parser.add_argument("--session", action="store_true",
                        help="the short GPU session (~150 s on an H200): b <= 1024, the paper's "
                             "and the default's steps with hungarian and auction, step profiles")
    args = parser.parse_args(argv)
    results = (run_session(device=args.device) if args.session
               else run_speed(quick=args.quick, device=args.device))
    text = speed_markdown(results)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.md").write_text(text)
        (args.out / "speed.json").write_text(json.dumps(results.to_dict(), indent=1, default=str))
        plot_solver_speed(results, args.out / "speed.png")
        if results.profiles:
            (args.out / "profile.md").write_text(profile_markdown(results.profiles))
            (args.out / "profile.json").write_text(
                json.dumps([p.to_dict() for p in results.profiles], indent=1))
    print(text)
    print(f"speed suite: {results.seconds['total']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
