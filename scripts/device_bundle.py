#!/usr/bin/env python
"""Prepare, here, everything a bare GPU machine needs for the first numbers: datasets and wheels in
parts, and the device commands that carry them (docs/first-numbers.md).

    python scripts/device_bundle.py [--data ../shared/data] [--out .device] [--no-wheels]

1. the wheels of the pure-Python packages (and their few compiled dependencies) that the GPU
   machines' image lacks (:data:`WHEELS`, at the versions installed here, for CPython 3.12 on
   x86-64 Linux: that image's python3), into ``<out>/wheels/``; a package published only as a
   source archive (antlr4-python3-runtime, Hydra's parser) is built into a wheel here;
2. ``camvid``, ``isbi`` and ``wheels`` packed by :mod:`segbench.parts` into ``<out>/packed/``;
3. the device commands: which files each one carries, within one command's 64 MiB less what the
   working tree already takes, and what it runs (``receive`` its parts into the machine's store;
   the last one also assembles, installs the wheels and runs scripts/first_numbers.py);
   printed, and written to ``<out>/loads.json``.

``<out>`` must be git-ignored (``/.device/`` is), or the parts would travel with every command.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# What `import segbench` and training need beyond the GPU image (its package list: the device
# README's KINDS.md): Hydra + OmegaConf + their parser runtime, albumentations and its dependencies.
WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "albumentations", "albucore", "pydantic",
          "pydantic-core", "annotated-types", "typing-inspection", "simsimd", "stringzilla")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
COMMAND_BYTES = 64 * 2**20  # one device command's working tree, carried files included
STORE, DATA, SITE = "/tmp/segbench-parts", "/tmp/segbench-data", "/tmp/site"  # on the device machine


def download_wheels(dest: Path) -> list[Path]:
    """Each of WHEELS at the version installed here, as a cp312 x86-64 wheel (built here if the
    index has only a source archive of it)."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    for name in WHEELS:
        pinned = f"{name}=={metadata.version(name)}"
        if any(dest.glob(f"{name.replace('-', '_')}-{metadata.version(name)}-*.whl")):
            continue
        binary = [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                  "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest), pinned]
        if subprocess.call(binary) != 0:  # pure Python published as an sdist only: build its wheel
            subprocess.check_call([*pip, "wheel", "--quiet", "--no-deps", "-w", str(dest), pinned])
    return sorted(dest.glob("*.whl"))


def tree_bytes() -> int:
    """What travels with every command: tracked files and untracked files git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.split(b"\0")
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def main(argv: list[str] | None = None) -> int:
    from segbench import parts
    from segbench.errors import SegbenchError
    from segbench.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="holds camvid/ and isbi/")
    parser.add_argument("--out", type=Path, default=REPO / ".device")
    parser.add_argument("--no-wheels", action="store_true", help="datasets only")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="first_numbers.py's budget in the last command (its limit: 600 s in all)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)  # git matches a folder pattern (/.device/) only on a folder
    try:
        if subprocess.run(["git", "check-ignore", "-q", str(out)], cwd=REPO).returncode != 0:
            raise SegbenchError(f"{out} is not git-ignored: its parts would travel with every device command")
        packed = out / "packed"
        if packed.exists():
            shutil.rmtree(packed)  # a new packing: the old manifests must not meet the new parts
        sets = {"camvid": args.data / "camvid", "isbi": args.data / "isbi"}
        if not args.no_wheels:
            sets["wheels"] = out / "wheels"
            print(f"wheels: {', '.join(p.name for p in download_wheels(sets['wheels']))}")
        for name, folder in sets.items():
            parts.pack(folder, packed, name)
        budget = COMMAND_BYTES - tree_bytes() - 2**20  # 1 MiB spare: the tree may grow a little before the run
        loads = [[str(Path(p).relative_to(REPO)) for p in load] for load in parts.loads(
            [packed / name for name in sets], budget)]
    except SegbenchError as err:
        print(f"device_bundle: {err}", file=sys.stderr)
        return 2
    commands = device_commands(loads, list(sets), args.budget_s)
    write_json(out / "loads.json", {"budget_bytes": budget, "commands": commands})
    for k, command in enumerate(commands, 1):
        print(f"command {k} carries {json.dumps(command['carry'])}\n  runs: {command['run']}")
    return 0


def device_commands(loads: list[list[str]], sets: list[str], budget_s: float) -> list[dict]:
    """Per load: what it carries and what it runs there. Every command receives its own parts; the
    last also assembles every set, installs the wheels and runs the first numbers into $OUT."""
    commands = []
    for k, load in enumerate(loads, 1):
        folders = sorted({str(Path(p).parent) for p in load})
        run = f"python3 -m segbench.parts receive {' '.join(folders)} --store {STORE}"
        if k == len(loads):
            targets = " ".join(f"{name}={DATA}/{name}" for name in sets)
            run += f" && python3 -m segbench.parts assemble {targets} --store {STORE}"
            if "wheels" in sets:
                run += (f" && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
                        f"--target {SITE} {DATA}/wheels/*.whl && export PYTHONPATH={SITE}")
            run += (f" && python3 scripts/first_numbers.py --data {DATA} --out $OUT --runs /tmp/segbench-runs "
                    f"--budget-s {budget_s:g}")
        commands.append({"carry": load, "run": run})
    return commands


if __name__ == "__main__":
    sys.exit(main())
