"""The exit codes of a training run (a script, ``python -m torchrl_mcmc.recipes``, :func:`train`).

Documented once, in docs/running.md; everything that ends a run names one of these.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    """How a run ended. A signal ``N`` that stopped it (after its checkpoint) gives ``128 + N``,
    as a shell reports a process killed by ``N``: see :meth:`signalled`.

    Examples:
        >>> int(ExitCode.BAD_INPUT), ExitCode.signalled(15)
        (2, 143)
    """

    #: Finished, or has nothing left to collect.
    OK = 0
    #: A bad configuration value or key, a ``resume=`` that cannot continue, an environment
    #: the methods cannot train on, sizes the machine cannot hold, or a run root that cannot be
    #: written: refused before anything was created.
    BAD_INPUT = 2
    #: The file system refused a write during the run (a checkpoint or ``summary.json``: a full
    #: disk, a directory made read-only): the last checkpoint is intact; free space or fix
    #: permissions, then ``resume=<run dir>``.
    FILESYSTEM = 3
    #: Training went non-finite for ``guard.max_nonfinite_updates`` updates in a row: stopped
    #: with a checkpoint of the last finite state.
    DIVERGED = 4

    @staticmethod
    def signalled(signum: int) -> int:
        """The exit code of a run stopped by signal ``signum``."""
        return 128 + signum
