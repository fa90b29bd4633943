#!/usr/bin/env python
"""Convert the official SUN RGB-D release to the extracted 37-class layout segbench reads.

    python scripts/convert_sunrgbd.py <SUNRGBD dir> <SUNRGBDtoolbox dir> <output dir> [--depth]

Inputs (from https://rgbd.cs.princeton.edu/): ``SUNRGBD.zip`` unpacked (``SUNRGBD/<sensor>/...``)
and ``SUNRGBDtoolbox.zip`` unpacked (``Metadata/SUNRGBDMeta.mat``, ``Metadata/SUNRGBD2Dseg.mat``
— MATLAB v7.3, read with h5py one frame at a time, so the ~64 GB MATLAB needs is not —
and ``traintestSUNRGBD/allsplit.mat``). Output, as in github.com/ankurhanda/sunrgbd-meta-data:
``SUNRGBD-train_images/img-NNNNNN.jpg`` (5,285), ``SUNRGBD-test_images/img-NNNNNN.jpg``
(5,050), ``sunrgbd_train_test_labels/img-NNNNNN.png`` (test 1..5050, train 5051..10335), and
with ``--depth`` ``sunrgbd_{train,test}_depth/img-NNNNNN.png`` (metres x 10000).

``segbench data prepare data=sunrgbd data.root=<dir>`` runs the same conversion when
``<dir>`` holds ``SUNRGBD/`` and ``SUNRGBDtoolbox/``; this script is for other places.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sunrgbd", type=Path, help="the unpacked SUNRGBD/ folder")
    parser.add_argument("toolbox", type=Path, help="the unpacked SUNRGBDtoolbox/ folder")
    parser.add_argument("output", type=Path, help="where to write the layout (becomes data.root)")
    parser.add_argument("--depth", action="store_true", help="also convert depth_bfx to depth PNGs")
    args = parser.parse_args(argv)

    from segbench.data.conversion import mark_prepared
    from segbench.data.prepare_sunrgbd import convert_sunrgbd
    from segbench.errors import SegbenchError

    try:
        counts = convert_sunrgbd(args.sunrgbd, args.toolbox, args.output, depth=args.depth)
    except SegbenchError as err:
        print(f"convert_sunrgbd: error: {err}", file=sys.stderr)
        return 2
    mark_prepared(args.output, "sunrgbd", **counts)
    print(f"wrote {counts['train']} train and {counts['test']} test frames to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
