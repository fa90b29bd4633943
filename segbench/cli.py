"""``segbench <verb> [hydra overrides]``: one Hydra app per verb.

Adding a verb is one entry in :data:`VERBS` (a function taking the composed config) and one
``conf/<config>.yaml``. Every verb gets Hydra's full command line for free: overrides,
``--cfg job``, ``--multirun``, ``--help``. Errors the user can cause (:class:`SegbenchError`)
end with one message on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError


@dataclass(frozen=True)
class Verb:
    target: str  # "module:function" taking the composed DictConfig
    config: str  # config name under conf/
    help: str
    actions: tuple[str, ...] = ()  # sub-commands: `segbench data check` becomes action=check
    multirun: bool = False  # always run as a Hydra multirun (segbench sweep)


VERBS: dict[str, Verb] = {
    "train": Verb("segbench.engine.trainer:run", "train", "train a model (model=, data=, optim=, schedule=, trainer=, experiment=)"),
    "eval": Verb("segbench.engine.evaluator:run", "eval", "evaluate a run dir or checkpoint (run=<dir> | ckpt=<file>), write metrics.json"),
    "report": Verb("segbench.report:run", "report", "collect metrics.json of many runs into one table (runs=<dir>)"),
    "sweep": Verb("segbench.sweep:run", "sweep", "train a grid of models x datasets x overrides (Hydra multirun), then one table",
                  multirun=True),
    "bench": Verb("segbench.bench:run", "bench", "params, FLOPs, latency, training step time and memory of a model (model=<name>|all)"),
    "data": Verb("segbench.data.commands:run", "datatool",
                 "download | check | prepare | stats a dataset tree (data=<name> data.root=<dir>)",
                 actions=("download", "check", "prepare", "stats")),
}


def _eval_dir(run: str | None, ckpt: str | None) -> str:
    """Where ``segbench eval`` logs: the run dir, or the folder holding the checkpoint."""
    if run:
        return str(run)
    if ckpt:
        return str(Path(ckpt).parent)
    return "."


def _class_weights(path: str) -> list[float]:
    """``loss.class_weights: ${class_weights:<file>}`` reads ``segbench data stats`` output."""
    from segbench.data.commands import load_class_weights

    return load_class_weights(path)


OmegaConf.register_new_resolver("segbench_eval_dir", _eval_dir, replace=True)
OmegaConf.register_new_resolver("class_weights", _class_weights, replace=True)


def usage() -> str:
    lines = ["usage: segbench <verb> [hydra overrides] [--cfg job] [--multirun] [--help]", "", "verbs:"]
    width = max(map(len, VERBS))
    lines += [f"  {name:<{width}}  {verb.help}" for name, verb in VERBS.items()]
    lines += ["", "`segbench <verb> --help` shows that verb's config groups and options."]
    return "\n".join(lines)


def run_verb(name: str, cfg: DictConfig):
    """Call the verb's function, turning user errors into one line and exit status 2."""
    module, function = VERBS[name].target.split(":")
    try:
        from segbench.trust import check_config

        check_config(cfg, "the command line")  # `model._target_=os.system` too: one rule for every config
        return getattr(importlib.import_module(module), function)(cfg)
    except SegbenchError as err:
        print(f"segbench {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"segbench {name}: interrupted", file=sys.stderr)
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name = argv[0]
    if name not in VERBS:
        print(f"segbench: unknown verb '{name}'\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    args = argv[1:]
    verb = VERBS[name]
    if verb.actions and args and args[0] in verb.actions:
        args = [f"action={args[0]}", *args[1:]]
    if verb.multirun and not {"-m", "--multirun", "--cfg", "-c", "--help", "-h"} & set(args):
        args = ["--multirun", *args]
    # Hydra parses sys.argv itself; give it the verb's arguments only.
    sys.argv = [f"segbench {name}", *args]
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    app = hydra.main(version_base="1.3", config_path="conf", config_name=VERBS[name].config)(
        lambda cfg: run_verb(name, cfg)
    )
    app()


if __name__ == "__main__":
    main()
