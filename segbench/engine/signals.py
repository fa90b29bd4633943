"""Stop requests: the signals that end training after the current step with ``last.pt`` written.

Exit status 128 + signal number, the shell's convention: 130 = Ctrl-C, 143 = SIGTERM (scancel,
preemption), 138 = SIGUSR1 (SLURM's ``--signal=USR1@<s>`` warning before the time limit), 140 =
SIGUSR2 (the warning submitit asks SLURM for; its requeue handler then runs, see
:meth:`StopRequest.hand_over`). The trainer decides *when* to stop; this module only records
that a stop was asked for and, at the end, passes the signal on.
"""
from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path
from typing import Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopRequest:
    """While active (``with``), the stop signals only set :attr:`signum`; the handlers that were
    installed before are restored on exit. A second Ctrl-C raises ``KeyboardInterrupt`` at once
    (the step itself hangs). Signal handlers can only be installed from the main thread; elsewhere
    this catches nothing."""

    def __init__(self):
        self.signum = 0  # the first stop signal received (0: none)
        self.previous: dict = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._request) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _request(self, signum, frame) -> None:
        if signum == self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def message(self, iteration: int, max_iters: int, run_dir: Path, resume_command: str | None) -> str:
        """What a stop says: where it stopped, its checkpoint, and the command that continues it."""
        command = resume_command or f"segbench train trainer.resume={shlex.quote(str(Path(run_dir).resolve()))}"
        return (f"{self.name}: stopped at iteration {iteration}/{max_iters}; checkpoint {Path(run_dir) / 'last.pt'}\n"
                f"resume with: {command}")

    def hand_over(self, message: str) -> None:
        """SIGUSR1/2 under hydra-submitit-launcher: the handler installed before training is
        submitit's; it requeues the job (which resumes from the ``last.pt`` just written) and exits.
        Any other signal, or none installed: nothing to do."""
        chained = self.previous.get(self.signum)
        if self.signum in (signal.SIGUSR1, signal.SIGUSR2) and callable(chained):
            print(message, flush=True)
            chained(self.signum, None)
