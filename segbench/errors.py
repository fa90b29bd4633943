"""User-facing errors.

Anything a user can cause (a bad override, missing data, a corrupt file, a wrong checkpoint,
a diverging loss) is raised as a :class:`SegbenchError`. The CLI prints its message on one
line block and exits with status 2 instead of showing a traceback; library users can catch it.
"""
from __future__ import annotations

import errno


class SegbenchError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


def segbench_cause(err: BaseException, depth: int = 5) -> SegbenchError | None:
    """The :class:`SegbenchError` behind ``err``, if one is in its first ``depth`` causes:
    Hydra and OmegaConf wrap what a resolver or a constructor raised."""
    cause = err.__cause__ or err.__context__
    while cause is not None and not isinstance(cause, SegbenchError) and depth > 0:
        cause, depth = cause.__cause__ or cause.__context__, depth - 1
    return cause if isinstance(cause, SegbenchError) else None


class DatasetNotFoundError(SegbenchError):
    """The dataset root or a file the layout requires is missing."""


class CorruptFileError(SegbenchError):
    """A file exists but cannot be decoded (image, label, checkpoint)."""


class CheckpointError(SegbenchError):
    """A checkpoint is missing, unreadable or does not fit the model."""


class WeightsNotAvailableError(SegbenchError):
    """Pretrained weights are requested but are neither cached nor downloadable."""


class DivergedError(SegbenchError):
    """Training produced a NaN or infinite loss."""


class Interrupted(SegbenchError):
    """Training stopped on a signal (SIGINT/SIGTERM/SIGUSR1) after writing ``last.pt``; the CLI
    prints the message (where the checkpoint is, how to resume) and exits ``exit_status``."""

    def __init__(self, message: str, exit_status: int, signum: int):
        super().__init__(message)
        self.exit_status, self.signum = exit_status, signum


def os_error_message(err: OSError) -> str:
    where = " ".join(str(f) for f in (err.filename, err.filename2) if f) or "a file"
    what = err.strerror or str(err)
    hint = {errno.ENOSPC: "free some disk space; files already written are intact",
            errno.EROFS: "the file system is read-only: choose a writable run_dir= (or SEGBENCH_RUNS)",
            errno.EACCES: "check the permissions, or choose another run_dir= (or SEGBENCH_RUNS)",
            errno.EPERM: "check the permissions, or choose another run_dir= (or SEGBENCH_RUNS)"}.get(err.errno, "")
    return f"{what}: {where}" + (f"; {hint}" if hint else "")
