"""Stop requests: the signals that end training after the current step with ``last.pt`` written.

Exit status 128 + signal number, the shell's convention: 130 = Ctrl-C, 143 = SIGTERM (scancel,
preemption), 138 = SIGUSR1 (SLURM's ``--signal=USR1@<s>`` warning before the time limit), 140 =
SIGUSR2 (the warning submitit asks SLURM for; its requeue handler then runs, see
:meth:`StopRequest.hand_over`). The trainer decides *when* to stop; this module only records
that a stop was asked for and, at the end, passes the signal on.

A cluster signals the whole job: SLURM (``scancel``, preemption, the time limit), ``timeout``,
systemd and a terminal's Ctrl-C reach every process of the group, DataLoader workers included.
A worker killed by it makes the DataLoader raise inside the step, and the run would end without
a checkpoint, so the workers ignore the stop signals (:func:`ignore_stop_signals`, their
``worker_init_fn``) and the main process, having written ``last.pt``, shuts them down
(:func:`shut_down_workers`).
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler before ours (they run last-first)
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
# torchrun passes a signal it receives on to its ranks, which, signalled as a group, already got
# it: a second SIGINT this soon after the first is the same Ctrl-C, not a second one.
SAME_PRESS_S = 1.0


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's ``worker_init_fn``: the main process handles the stop signals."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _kill_remaining_workers() -> None:
    """At exit, before multiprocessing's own handler: that one ends daemonic children (DataLoader
    workers) with SIGTERM, which ours ignore, then joins them, and would wait forever for a
    worker whose loader was never shut down (an eval loader, a loader a traceback still holds)."""
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if not workers:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report these kills as worker failures
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(5)


atexit.register(_kill_remaining_workers)


def shut_down_workers(loader_iterator) -> None:
    """End a DataLoader iterator's worker processes now (they ignore SIGTERM, so Python's exit
    could not terminate them); the iterator is finished after this. ``None``: nothing to do."""
    # torch has no public call for it (only garbage collection, too late when a traceback holds
    # the iterator); single-process iterators have none
    shutdown = getattr(loader_iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def wait_forwarding(process) -> tuple[int, int]:
    """Wait for ``process`` (torchrun, started in its own session), passing each stop signal this
    process receives on to it, once; torchrun passes it to its ranks. Returns (exit status, the
    last signal passed on or 0). In its own session torchrun hears a signal to the job only from
    here: a second copy from the job's process group would end torchrun before its ranks."""
    passed = 0

    def forward(signum, frame):
        nonlocal passed
        passed = signum
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        return process.wait(), passed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class StopRequest:
    """While active (``with``), the stop signals only set :attr:`signum`; the handlers that were
    installed before are restored on exit. A second Ctrl-C (more than :data:`SAME_PRESS_S` after
    the first) raises ``KeyboardInterrupt`` at once (the step itself hangs). Signal handlers can
    only be installed from the main thread; elsewhere this catches nothing."""

    def __init__(self):
        self.signum = 0  # the stop signal received (0: none)
        self.previous: dict = {}
        self.first_at = 0.0  # when it first arrived (time.monotonic())

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._request) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _request(self, signum, frame) -> None:
        now = time.monotonic()
        if signum == self.signum == signal.SIGINT and now - self.first_at > SAME_PRESS_S:
            raise KeyboardInterrupt
        if signum != self.signum:
            self.signum, self.first_at = signum, now

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
