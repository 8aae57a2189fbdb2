"""What every result records about how it was made (docs/benchmarks.md): one helper for the
training runs' ``summary.json`` and for every benchmark."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: Where ``git`` looks for the commit: the package's own folder, so that the commit is the
#: code's (the repository of an editable install), whatever directory the run starts from.
_PACKAGE_DIR = Path(__file__).resolve().parent


def provenance(
    command: list[str] | None = None, device: torch.device | str | None = None
) -> dict[str, Any]:
    """The command, git commit (and whether the tree was dirty), date, package versions,
    device, CPU model and thread count.

    Outside a git checkout (an installed wheel) the commit is ``""`` and the tree counts as
    clean.

    Args:
        command: the command that made the result (default: this process's ``sys.argv``).
        device: the device it ran on (default: CPU).
    """
    import gymnasium
    import mujoco
    import tensordict
    import torchrl

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True)
            return out.stdout.strip()
        except OSError:
            return ""

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        models = (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = next(models, cpu)
    return {
        "command": shlex.join(sys.argv if command is None else command),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__,
            "gymnasium": gymnasium.__version__,
            "mujoco": mujoco.__version__,
        },
        "device": str(torch.device("cpu") if device is None else torch.device(device)),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
