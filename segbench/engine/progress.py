"""What the training loop shows while it runs: the tqdm bar, TensorBoard scalars and prediction
overlays, and the running loss between two reports (a NaN stops training there). Under DDP the
reported loss is the global batch's (the mean over ranks), so a NaN on any rank stops every rank
at the same report with the same message. Only rank 0 writes TensorBoard events."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench.data.normalization import rgb_images
from segbench.engine.distributed import World, mean_over_ranks
from segbench.errors import DivergedError


class TrainingLog:
    def __init__(self, run_dir: Path, start: int, total: int, device: torch.device, world: World, bar: bool):
        self.writer, self.world = None, world
        main = world.is_main
        if main:
            from torch.utils.tensorboard import SummaryWriter  # deferred: ~1 s to import, only rank 0 writes

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
        self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, disable=not (main and bar))
        # the loss stays on the device between reports: adding it up costs no host sync per step
        self.loss_sum, self.steps, self.window_start = torch.zeros((), device=device), 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.bar.update(1)

    def report(self, iteration: int, lr: float, batch_size: int, checkpoint: Path) -> None:
        """Mean loss, lr and images/s since the last report; a loss that is not finite stops
        training (:class:`DivergedError`, naming the intact ``checkpoint`` if there is one)."""
        # float() waits for the device, so the rate below counts finished steps
        total = mean_over_ranks(float(self.loss_sum), self.world)
        if not math.isfinite(total):
            raise DivergedError(
                f"loss became {total} at iteration {iteration}; stopped. "
                + (f"The last good checkpoint {checkpoint} is intact. " if checkpoint.exists() else "")
                + "Try a lower optim.lr, trainer.grad_clip=<norm> or trainer.precision=fp32.")
        loss = total / self.steps
        rate = self.steps * batch_size / (time.perf_counter() - self.window_start)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        if self.writer:
            self.writer.add_scalar("train/loss", loss, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)
            self.writer.add_scalar("train/images_per_s", rate, iteration)
        self.loss_sum.zero_()
        self.steps, self.window_start = 0, time.perf_counter()

    def validation(self, iteration: int, scores: dict, shown: list, dataset, num_vis: int) -> None:
        """The scores, per-class IoU, and image | ground truth | prediction panels of the first batch."""
        if not self.writer:
            return
        for key in ("mIoU", "mAcc", "aAcc", "fwIoU", "warping_error", "rand_error", "pixel_error"):
            if key in scores:  # the ISBI 2012 errors only where the protocol measures them
                self.writer.add_scalar(f"val/{key}", scores[key], iteration)
        for name, iou in zip(dataset.class_names, scores["IoU"]):
            if not math.isnan(iou):
                self.writer.add_scalar(f"val_IoU/{name}", iou, iteration)
        panels = []
        for batch, pred in shown[:1]:
            images = rgb_images(batch["image"][:num_vis])  # the images as read, whatever the normalisation
            for i, image in enumerate(images[:len(pred)]):
                gt = dataset.colorize(batch["label"][i].numpy().astype(np.uint8))
                pr = dataset.colorize(pred[i].numpy().astype(np.uint8))
                panels.append(np.concatenate([image, gt, pr], axis=1))
        if panels:
            self.writer.add_images("val/image_gt_pred", np.stack(panels), iteration, dataformats="NHWC")

    def close(self) -> None:
        self.bar.close()
        if self.writer:
            self.writer.close()
