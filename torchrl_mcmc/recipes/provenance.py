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

#: The package's folder: ``git`` runs there, so that the commit is the code's whatever directory
#: the run starts from.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def provenance(
    command: list[str] | None = None, device: torch.device | str | None = None
) -> dict[str, Any]:
    """The command, git commit (and whether the tree was dirty), date, package versions
    (``torchrl_mcmc``'s included), device, CPU model and thread count.

    The commit is recorded only when ``torchrl_mcmc`` is imported from a source checkout of
    this package (a clone, or its editable install), where it names the code that ran: a
    repository that tracks the package's files. Otherwise (an installed wheel, even inside
    some other repository) the commit is ``""`` and the tree counts as clean.

    Args:
        command: the command that made the result (default: this process's ``sys.argv``).
        device: the device it ran on (default: CPU).
    """
    import gymnasium
    import mujoco
    import tensordict
    import torchrl

    import torchrl_mcmc

    commit, dirty = "", False
    if _git("ls-files", "--error-unmatch", "__init__.py") is not None:  # tracked: a checkout
        commit = _git("rev-parse", "HEAD") or ""
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
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
        "git_commit": commit,
        "git_dirty": dirty,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "python": platform.python_version(),
            "torchrl_mcmc": torchrl_mcmc.__version__,
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


def _git(*args: str) -> str | None:
    """``git args`` run in the package's folder: its output, or ``None`` when it fails (not a
    repository, the file is not tracked, no git)."""
    try:
        out = subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None
