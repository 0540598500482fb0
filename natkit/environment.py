"""What a run was trained with: natkit, torch, CUDA and cuDNN versions, devices, platform, git.

Every start and every resume of a run adds one record to ``RUN_DIR/environment.json``,
so a run resumed on another machine says so.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from natkit.version import __version__

ENVIRONMENT = "environment.json"


def usable_cores() -> int:
    """The CPU cores this process may use (its affinity), not the host's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """This process's software, hardware and source, as plain data for environment.json."""
    cuda = torch.cuda.is_available()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "natkit": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built with (None: a CPU build)
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else [],
        "world_size": world_size,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "git": git_state(Path.cwd()),
    }


def git_state(where: Path) -> dict[str, Any] | None:
    """The commit checked out where the run starts, and whether files differ from it; None
    outside a git repository (or without git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "root": git("rev-parse", "--show-toplevel")}
