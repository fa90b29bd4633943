"""Turn a composed config into the model, the datasets and their loaders.

The trainer and the evaluator both build through here, so validation during training and
``segbench eval`` see the same model and the same data pipeline (the device and precision
resolve in :mod:`segbench.engine.device`, the optimiser in :mod:`segbench.engine.optim`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from segbench.data.weight_map import WeightMaps
from segbench.data.workers import num_workers
from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.distributed import barrier
from segbench.engine.sampler import ResumableSampler, SeededView
from segbench.engine.signals import ignore_stop_signals
from segbench.errors import SegbenchError
from segbench.trust import instantiate_unwrapped


def build_model(cfg: DictConfig) -> torch.nn.Module:
    return instantiate_unwrapped(constructor_config(cfg.model))


INIT_FROM = "init_from"
NOT_ARGUMENTS = (INIT_FROM, "smoke")


def constructor_config(model_cfg: DictConfig) -> DictConfig:
    """``cfg.model`` without the keys that are not constructor arguments: ``init_from`` (weights
    from an earlier run, copied after building: :func:`init_from_run`) and ``smoke`` (the model's
    small variant for tests and smoke runs, read by the app layer's smoke module)."""
    present = [key for key in NOT_ARGUMENTS if key in model_cfg.keys()]  # (``in`` is False for ``???``)
    if not present:
        return model_cfg
    plain = OmegaConf.to_container(model_cfg, resolve=True)  # resolved while the parent is at hand
    for key in present:
        plain.pop(key)
    return OmegaConf.create(plain)


def apply_init_from(model: torch.nn.Module, model_cfg: DictConfig, resuming: bool = False,
                    quiet: bool = False) -> list[str] | None:
    """``model.init_from`` if set (and not resuming: the run's own checkpoint wins). A staged
    recipe leaves it ``???``: training it alone is a user error with the fix in the message."""
    if INIT_FROM not in model_cfg.keys() or resuming:
        return None
    if OmegaConf.is_missing(model_cfg, INIT_FROM):
        raise SegbenchError("this recipe is staged: set model.init_from=<run dir or checkpoint of its previous "
                            "stage> (e.g. FCN-16s from an fcn32s_vgg16_voc run); make reproduce chains the stages")
    source = model_cfg[INIT_FROM]
    if source in (None, ""):
        return None
    return init_from_run(model, source, log=(lambda _: None) if quiet else print)


def init_from_run(model: torch.nn.Module, source, log=print) -> list[str]:
    """Copy into ``model`` every tensor of an earlier run whose name and shape match.

    FCN's staged training (§4.2; reference ``voc-fcn16s/solve.py`` ``copy_from``: Caffe copies
    the layers whose names match) initialises FCN-16s from a trained FCN-32s and FCN-8s from
    FCN-16s: the trunk, fc6/fc7 and ``score_fr`` carry over, the new skip scorers keep their
    zero init. ``source`` is a run directory (its ``best.pt``, else ``last.pt``) or a checkpoint
    file. Returns the names of this model's tensors left as they were (and logs them); raises
    when nothing matches (the wrong run).
    """
    path = Path(str(source)).expanduser()
    if path.is_dir():
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).is_file()), path / "last.pt")
    weights = load_checkpoint(path)["model"]
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not matching:
        raise SegbenchError(f"model.init_from={source}: no tensor of {path} matches this model by name and "
                            f"shape (was it trained with another network?)")
    model.load_state_dict(matching, strict=False)
    skipped = [k for k in own if k not in matching]
    log(f"init_from {path}: copied {len(matching)} tensors, kept {len(skipped)} as initialised"
        + (f": {', '.join(skipped)}" if skipped else ""))
    return skipped


def build_dataset(cfg: DictConfig, split: str, train: bool):
    transform = instantiate_unwrapped(cfg.data.transforms.train if train else cfg.data.transforms.val)
    dataset = instantiate_unwrapped(cfg.data.dataset, split=split, transform=transform)
    if dataset.num_classes != cfg.data.num_classes:
        raise SegbenchError(
            f"data.num_classes={cfg.data.num_classes} but {dataset.name} has {dataset.num_classes} classes"
        )
    return dataset


def build_train_val(cfg: DictConfig, world) -> tuple:
    """The training and validation sets; rank 0 builds first (a dataset may generate or convert
    files on first use), the other ranks then read what it made."""
    if not world.is_main:
        barrier(world)
    datasets = build_dataset(cfg, cfg.data.train_split, train=True), build_dataset(cfg, cfg.data.val_split, train=False)
    if world.is_main:
        barrier(world)
    return datasets


def build_eval_loader(cfg: DictConfig, dataset, sampler=None) -> DataLoader:
    batch = int(cfg.data.val_batch_size)
    workers = num_workers(cfg.data.num_workers, -(-len(dataset) // batch))  # one pass: no more than its batches
    return DataLoader(dataset, batch_size=batch, shuffle=False, sampler=sampler, num_workers=workers,
                      worker_init_fn=ignore_stop_signals,  # a signal to the whole job is the main process's to handle
                      **loader_options(workers, torch.device("cuda" if torch.cuda.is_available() else "cpu")))


def build_train_loader(cfg: DictConfig, dataset, world, start_iter: int, device: torch.device) -> DataLoader:
    """This process's share of the global ``data.batch_size``, from iteration ``start_iter`` on
    (:class:`~segbench.engine.sampler.ResumableSampler`: a resumed run sees the same images)."""
    per_process = int(cfg.data.batch_size) // world.size
    if per_process < 1:
        raise SegbenchError(f"data.batch_size={cfg.data.batch_size} is smaller than the {world.size} processes")
    sampler = ResumableSampler(len(dataset), per_process, seed=int(cfg.trainer.seed), start_iter=start_iter,
                               rank=world.rank, world_size=world.size)
    workers = num_workers(cfg.data.num_workers, len(dataset))
    return DataLoader(SeededView(dataset, weight_maps(cfg)), batch_size=per_process, sampler=sampler,
                      num_workers=workers, persistent_workers=workers > 0, drop_last=True,
                      worker_init_fn=ignore_stop_signals,  # the main process handles a signal to the job
                      **loader_options(workers, device))


def loader_options(workers: int, device: torch.device) -> dict:
    """Pinned host memory for a GPU (the copy runs asynchronously, ``non_blocking``), and with
    workers on a GPU 4 batches in flight per worker instead of 2, to ride out a slow image."""
    options = {"pin_memory": device.type == "cuda"}
    if workers > 0 and device.type == "cuda":
        options["prefetch_factor"] = 4
    return options


def weight_maps(cfg: DictConfig):
    """U-Net's per-pixel loss weights (``loss.weight_map``), made in the loader's workers; None without."""
    options = cfg.get("loss", {}).get("weight_map")
    if not options:
        return None
    return WeightMaps(int(cfg.data.num_classes), int(cfg.loss.get("ignore_index", 255)), **options)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone."))
    return {"total": total, "trainable": trainable, "backbone": backbone, "head": total - backbone}
