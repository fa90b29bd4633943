"""``segbench predict run=<dir> | ckpt=<file> input=<image, folder or glob> output=<dir>``.

Labels your own images with a trained run. The checkpoint is loaded by the loader ``segbench
eval`` uses (:func:`segbench.app.loaded.load`): the model, the dataset's classes, palette and
label encoding, the normalisation, the evaluation protocol (whole / sliding window, scales, flip,
output stride, CRF) and the precision and memory format the training ran in (or ``precision=`` /
``channels_last=``); ``protocol.*`` and ``postprocess=`` override the protocol the same way.
Each batch then goes through the evaluator's own per-batch path
(:class:`segbench.engine.inference.BatchInference`), so an image ``segbench eval`` scores gets
the same prediction here. The dataset itself is not needed.

Per image ``<stem>`` it writes into ``output``:

* ``<stem>.png`` — the prediction in the dataset's own label encoding (``save_prediction``:
  VOC palette indices, Cityscapes label ids, CamVid class ids 0..10, ...), readable by
  segbench's reader of that dataset;
* ``<stem>_color.png`` — the prediction in the dataset's colours;
* ``<stem>_overlay.png`` — the colours blended onto the image (``alpha``);

and once ``legend.png`` (class colours and names). Images of any size work: the protocol pads a
corner-aligned model's input to ``k*OS+1`` and crops the scores back, exactly as ``segbench eval``
does, so both verbs give one image the same labels.
Same-sized images are batched (``batch_size``). An unreadable or truncated image is named,
skipped and counted at the end. ``output`` may not be (or be inside) the inputs' folder, and a
file already there is replaced only with ``overwrite=true`` (checked before anything is written).
"""
from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from segbench.app.loaded import Loaded, load
from segbench.errors import SegbenchError
from segbench.io import write_png
from segbench.trust import confined_path, instantiate_unwrapped

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
OUTPUT_SUFFIXES = ("_color", "_overlay")


def list_inputs(spec: str) -> list[Path]:
    """An image file, every image in a folder (sorted, not recursive), or a glob pattern."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise SegbenchError(f"no images found for input={spec} (give an image, a folder of images or a glob "
                            f"such as 'photos/*.jpg')")
    return files


def read_image(path: Path) -> tuple[np.ndarray | None, str]:
    """(RGB image, "") or (None, why it cannot be used). OpenCV decodes a truncated JPEG or PNG
    without an error, filling the missing part with grey; PIL's full decode notices it first."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable and truncated files
        return None, "truncated image" if "truncated" in str(err) else "not a readable image"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grey images come back as 3 channels
    if image is None:
        return None, "not a readable image"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), ""


def legend(codec) -> np.ndarray:
    """One row per class: its colour swatch and name."""
    names = list(codec.class_names)
    row, width = 22, 40 + 9 * max(len(n) for n in names) + 10
    sheet = np.full((row * len(names) + 4, width, 3), 255, np.uint8)
    colors = codec.colorize(np.arange(len(names), dtype=np.uint8)[None])[0]
    for i, (name, color) in enumerate(zip(names, colors)):
        y = 2 + i * row
        sheet[y + 2:y + row - 2, 4:32] = color
        cv2.putText(sheet, f"{i} {name}", (40, y + row - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return sheet


def overlay(image: np.ndarray, color: np.ndarray, label: np.ndarray, alpha: float) -> np.ndarray:
    out = image.astype(np.float32)
    mask = label != 255
    out[mask] = (1 - alpha) * out[mask] + alpha * color[mask].astype(np.float32)
    return out.round().astype(np.uint8)


class Predictor:
    """A checkpoint loaded for ``segbench predict`` (:func:`segbench.app.loaded.load`) and applied to
    images of any size; ``__call__`` maps same-sized RGB images to train-id label maps at their size."""

    def __init__(self, cfg: DictConfig):
        self.loaded: Loaded = load(cfg, verb="predict")
        self.transform = instantiate_unwrapped(self.loaded.config.data.transforms.val)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The run's val pipeline, then the evaluator's per-batch path; scores of a pipeline that
        resized are resized back first."""
        height, width = images[0].shape[:2]
        batch = np.stack([self.transform(image=im)["image"] for im in images]).transpose(0, 3, 1, 2)
        inference = self.loaded.inference
        scores = inference.scores(torch.from_numpy(np.ascontiguousarray(batch)))
        if scores.shape[-2:] != (height, width):
            scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
        labels, _ = inference.labels(scores, np.stack(images))
        return list(labels.to(torch.uint8).cpu().numpy())


def batches(paths: list[Path], size: int):
    """``(paths, images, "")`` groups of at most ``size`` consecutive images of one size; a file
    that cannot be used comes out alone as ``([path], None, why)``."""
    group: list[tuple[Path, np.ndarray]] = []
    for path in paths:
        image, problem = read_image(path)
        if image is None:
            yield [path], None, problem
            continue
        if group and (len(group) == size or group[0][1].shape != image.shape):
            yield [p for p, _ in group], [im for _, im in group], ""
            group = []
        group.append((path, image))
    if group:
        yield [p for p, _ in group], [im for _, im in group], ""


def output_names(paths: list[Path]) -> list[str]:
    """Every file ``predict`` writes for ``paths`` (see the module docstring)."""
    stems = [Path(p.name).stem for p in paths]
    return ["legend.png", *(f"{stem}{suffix}.png" for stem in stems for suffix in ("", *OUTPUT_SUFFIXES))]


def check_output(out: Path, spec: str, paths: list[Path], overwrite: bool) -> None:
    """Nothing the user owns is replaced unasked: ``output`` must not be (or be inside) a folder
    the inputs come from, and files already there are replaced only with ``overwrite=true``."""
    where = out.expanduser().resolve()
    sources = {p.resolve().parent for p in paths}
    if Path(spec).expanduser().is_dir():
        sources.add(Path(spec).expanduser().resolve())
    for folder in sorted(sources):
        if where == folder or folder in where.parents:
            raise SegbenchError(f"output={out} is {'the' if where == folder else 'inside the'} folder of the input "
                                f"images ({folder}); predictions would land among (or over) them: choose an "
                                f"output= outside it")
    existing = [name for name in output_names(paths) if (out / name).exists()]
    if existing and not overwrite:
        listed = ", ".join(existing[:5]) + (f" (+{len(existing) - 5} more)" if len(existing) > 5 else "")
        raise SegbenchError(f"output={out} already holds {len(existing)} file(s) this would write: {listed}; "
                            f"pass overwrite=true to replace them, or choose another output=")


def write_outputs(out: Path, path: Path, image: np.ndarray, label: np.ndarray, codec, alpha: float) -> None:
    """``codec``: the run's dataset class (its ``save_prediction`` and ``colorize``)."""
    stem = Path(path.name).stem
    codec.save_prediction(label, confined_path(out, f"{stem}.png", source=str(path)))
    color = codec.colorize(label)
    write_png(color, confined_path(out, f"{stem}_color.png", source=str(path)))
    write_png(overlay(image, color, label, alpha), confined_path(out, f"{stem}_overlay.png", source=str(path)))


def run(cfg: DictConfig) -> dict:
    if not cfg.get("input"):
        raise SegbenchError("say which images: segbench predict run=<run dir> input=<image, folder or glob> "
                            "output=<dir>")
    paths = list_inputs(str(cfg.input))
    stems = [Path(p.name).stem for p in paths]
    if len(set(stems)) != len(stems):
        raise SegbenchError("two inputs share a file name; their outputs would overwrite each other "
                            "(predict one folder at a time)")
    predictor = Predictor(cfg)
    loaded = predictor.loaded
    out = Path(cfg.output).expanduser() if cfg.get("output") else loaded.checkpoint.parent / "predict"
    check_output(out, str(cfg.input), paths, bool(cfg.get("overwrite", False)))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SegbenchError(f"cannot create output={out} ({err.strerror})") from None
    codec, alpha, settings = loaded.dataset_class, float(cfg.get("alpha", 0.5)), loaded.settings
    print(f"segbench predict: {len(paths)} image(s) with {loaded.checkpoint} (iteration {loaded.iteration}, "
          f"{loaded.config.data.name}, protocol {settings.protocol.describe()}; {settings.precision}"
          f"{', channels_last' if settings.channels_last else ''}) -> {out}")
    written, skipped = [], []
    bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True,
               disable=not cfg.get("progress", True) or None)
    with bar:
        for group, images, problem in batches(paths, max(1, int(cfg.get("batch_size", 4)))):
            if images is None:
                bar.write(f"skipped {group[0]}: {problem}")
                skipped.append(str(group[0]))
            else:
                for path, image, label in zip(group, images, predictor(images)):
                    write_outputs(out, path, image, label, codec, alpha)
                    written.append(str(path))
            bar.update(len(group))
    if not written:
        raise SegbenchError(f"none of the {len(paths)} input(s) is a readable, complete image")
    write_png(legend(codec), out / "legend.png")  # once something was predicted: a failed run leaves no file
    print(f"wrote {len(written)} prediction(s) (label PNG in the {codec.name} encoding, _color, _overlay) "
          f"and legend.png to {out}" + (f"; skipped {len(skipped)} unreadable image(s)" if skipped else ""))
    return {"output": str(out), "written": written, "skipped": skipped}
