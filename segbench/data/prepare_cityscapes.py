"""``segbench data prepare data=cityscapes``: every ``*_gt{Fine,Coarse}_labelIds.png`` →
sibling ``*_labelTrainIds.png``, as cityscapesScripts' ``csCreateTrainIdLabelImgs`` writes
them (identical to drawing the polygons with train ids, since ``json2labelImg`` draws both
encodings from the same polygons and skips id -1). Idempotent and atomic
(:mod:`segbench.data.conversion`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data.cityscapes import CODEC, Cityscapes
from segbench.data.codec import LabelCodec
from segbench.data.conversion import already_prepared, mark_prepared, progress
from segbench.errors import CorruptFileError, DatasetNotFoundError
from segbench.io import write_png


def prepare_cityscapes(root: Path, force: bool = False) -> dict | None:
    root = Path(root)
    if already_prepared(root, "cityscapes", force):
        return None
    pairs = []
    for gt in ("gtFine", "gtCoarse"):
        for src in sorted((root / gt).glob(f"*/*/*_{gt}_labelIds.png")):
            pairs.append((src, src.with_name(src.name.replace("_labelIds.png", "_labelTrainIds.png"))))
    if not pairs:
        raise DatasetNotFoundError(f"cityscapes: no *_gtFine_labelIds.png under {root / 'gtFine'}\n"
                                   f"Expected layout:\n{Cityscapes.layout}\nGet the data from: {Cityscapes.source}")
    convert_label_images(pairs, CODEC, desc="labelIds -> labelTrainIds")
    print(f"cityscapes: wrote {len(pairs)} *_labelTrainIds.png files")
    mark_prepared(root, "cityscapes", files=len(pairs))
    return {"files": len(pairs)}


def convert_label_images(pairs: Sequence[tuple[Path, Path]], codec: LabelCodec, desc: str) -> int:
    """Re-encode label PNGs through ``codec``; each output written under a temp name and
    renamed, so a present file is always complete."""
    for src, dst in progress(pairs, total=len(pairs), desc=desc):
        try:
            with Image.open(src) as img:
                raw = np.array(img)
        except (OSError, ValueError, SyntaxError) as err:
            raise CorruptFileError(f"corrupt or unreadable file: {src} ({err})") from None
        write_png(codec.decode(raw), dst)
    return len(pairs)
