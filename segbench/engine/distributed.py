"""Multi-process (DDP) plumbing. A single process is the world-size-1 case of everything here.

Three ways to start N processes, one code path once they run:

* ``torchrun --nproc_per_node=N -m segbench train ...`` (any number of nodes, torchrun's
  rendezvous): torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...;
* ``segbench train trainer.devices=N``: :func:`launch` re-runs the same command under
  ``python -m torch.distributed.run --standalone --nproc_per_node=N`` (one node);
* SLURM through Hydra's submitit launcher (``hydra/launcher=submitit_slurm``,
  ``tasks_per_node=N``): SLURM starts the N tasks and :func:`setup` exports the
  ``torch.distributed`` variables from the SLURM ones (submitit's own helper).

Backend: NCCL on CUDA, gloo on CPU. Rank 0 alone writes checkpoints, logs and metrics; the
validation set is sharded without padding (:class:`ShardSampler`) and the confusion matrices
are summed, so a validation under DDP scores exactly the images a single process would.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from segbench.engine.signals import wait_forwarding
from segbench.errors import SegbenchError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    # a gloo group for the host-side agreements (a stop request): under NCCL a flag on the GPU
    # would make every step wait for the device; None = the default group (gloo already, on CPU)
    control: object = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_slurm_environment() -> None:
    """Under a submitit SLURM job of several tasks, set what ``init_process_group`` reads."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment  # an optional extra (hydra-submitit-launcher), only under SLURM

    # Keep every GPU visible: segbench.engine.device.bind_device picks this task's GPU.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def launch_environment() -> tuple[int, int, int]:
    """``(rank, local rank, world size)`` as the launcher (torchrun, SLURM tasks under submitit)
    describes this process; ``(0, 0, 1)`` for a process nobody launched."""
    _export_slurm_environment()
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> World:
    """Join the process group torchrun (or SLURM) describes in the environment, if any.

    ``device`` is already bound (:func:`segbench.engine.device.bind_device`): NCCL places its
    communicator, and ``broadcast_object_list`` its tensors, on the current GPU, which is GPU 0
    on every rank until bound ("Duplicate GPU detected", pytorch#68666)."""
    _, local_rank, size = launch_environment()
    if size == 1:
        return World()
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return World(rank=dist.get_rank(), local_rank=local_rank, size=size, control=control)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank (picklable objects), through the host (``world.control``)."""
    if world.size == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0, group=world.control)
    return holder[0]


def agree(signum: int, failure: str | None, world: World) -> tuple[int, str | None]:
    """What every rank acts on before a step: the largest stop ``signum`` any rank received (0:
    none), and the ``failure`` message of the lowest rank that has one (None: no rank failed).

    The trainer asks once per step, so that all ranks stop at the same iteration: a rank that
    stopped alone would leave the others waiting in the next gradient all-reduce until the NCCL
    timeout (30 min). Two integers through the gloo ``world.control`` group (no device sync, a
    host round trip); the messages travel only when some rank failed.
    """
    if world.size == 1:
        return signum, failure
    flags = torch.tensor([signum, failure is not None], dtype=torch.int64)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=world.control)
    if not flags[1]:
        return int(flags[0]), None
    messages = [None] * world.size
    dist.all_gather_object(messages, failure, group=world.control)
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    return int(flags[0]), f"rank {rank} of {world.size}: {message}"


def mean_over_ranks(value: float, world: World) -> float:
    """The mean of ``value`` over all ranks (the training loss of the global batch), on the host."""
    if world.size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total, group=world.control)
    return float(total.item()) / world.size


def broadcast_buffers(module: nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step each
    rank holds its own statistics; validation must use the ones rank 0 saves.
    """
    if world.size == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """``model`` under ``DistributedDataParallel`` when there are several processes, else itself."""
    if world.size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ---- devices and the single-node launcher --------------------------------------------------------
def requested_processes(devices, device_type: str) -> int:
    """``trainer.devices``: processes per node (an int, or ``auto`` = every visible GPU, 1 on CPU)."""
    if devices in (None, "auto"):
        return torch.cuda.device_count() if device_type == "cuda" else 1
    try:
        count = int(devices)
    except (TypeError, ValueError):
        raise SegbenchError(f"trainer.devices must be a positive integer or auto, got '{devices}'") from None
    if count < 1:
        raise SegbenchError(f"trainer.devices must be >= 1, got {count}")
    if device_type == "cuda" and count > torch.cuda.device_count():
        raise SegbenchError(f"trainer.devices={count} but only {torch.cuda.device_count()} GPUs are visible")
    return count


def check_launch_matches(devices, device_type: str) -> None:
    """Under torchrun/SLURM the launcher decides the process count; a different explicit
    ``trainer.devices`` is a contradiction worth stopping for."""
    if devices in (None, "auto", 1, "1"):
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if int(devices) != local:
        raise SegbenchError(
            f"trainer.devices={devices} but the launcher started {local} processes on this node; "
            f"drop trainer.devices (torchrun's --nproc_per_node decides) or make them equal"
        )


def launched() -> bool:
    """Whether something (torchrun, SLURM tasks under submitit) already started the processes."""
    return "WORLD_SIZE" in os.environ or (
        os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1)


def hydra_quoted(text: str) -> str:
    """``text`` as one Hydra override value, whatever it holds (a path, a job name with commas)."""
    return "'" + text.replace("'", "\\'") + "'"


def launch(verb: str, overrides: Sequence[str], processes: int, run_dir: str, device_type: str) -> int:
    """Run ``segbench <verb> <overrides>`` as ``processes`` DDP processes on this machine.

    The children share the parent's run directory (``hydra.run.dir``), so the run lands in
    one place whatever the clock says. On CPU each process gets ``cores / processes`` threads.
    Returns torchrun's exit status; after a stop signal (passed on to torchrun, which passes it
    to the ranks: each saves and exits 128 + the signal) that status, 128 + the signal.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "segbench", verb, *overrides, f"hydra.run.dir={hydra_quoted(run_dir)}"]
    env = dict(os.environ)
    if device_type == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    print(f"launching {processes} processes: {shlex.join(command)}", flush=True)
    status, signum = wait_forwarding(subprocess.Popen(command, env=env, start_new_session=True))
    return 128 + signum if signum else status


# ---- SyncBatchNorm -------------------------------------------------------------------------------
def maybe_sync_batchnorm(model: nn.Module, sync_bn, device: torch.device, world: World) -> tuple[nn.Module, str | None]:
    """Apply ``trainer.sync_bn`` (``auto`` | true | false); returns the model and a note to print.

    ``auto`` = on for a multi-process CUDA run: per-GPU batches of 2-8 crops are too small for
    BN statistics, which is why the papers' multi-GPU recipes sync them (PSPNet §4.1, DeepLab v3
    §4.1 trains BN with batch 16 on one machine). PyTorch's SyncBatchNorm runs on CUDA only, so
    a CPU (gloo) run keeps per-process BatchNorm and says so. Frozen BN layers (DeepLab v2's,
    no trainable parameters) stay as they are.
    """
    if isinstance(sync_bn, str) and sync_bn != "auto":
        raise SegbenchError(f"trainer.sync_bn must be auto, true or false, got '{sync_bn}'")
    if world.size == 1 or sync_bn is False:
        return model, None
    if device.type != "cuda":
        return model, (f"trainer.sync_bn={str(sync_bn).lower()}: PyTorch's SyncBatchNorm runs on CUDA "
                       f"only; this CPU (gloo) run keeps per-process BatchNorm statistics")
    return convert_sync_batchnorm(model), None


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that leaves frozen BN layers alone."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            return module
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            module.add_module(name, converted)
    return module


# ---- evaluation sharding -------------------------------------------------------------------------
class ShardSampler(Sampler):
    """Indices ``rank, rank + N, rank + 2N, ...``: every image scored once, none repeated.

    ``DistributedSampler`` pads the split to a multiple of N with repeated images, which would
    count them twice in the summed confusion matrix. Ranks may get one batch more or less than
    each other; evaluation runs the bare model (no DDP collectives per batch), so that is fine.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
