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

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from segbench.app.help import verb_help
from segbench.app.outputs import discard_new_output_dir  # (importing segbench.app registers the config resolvers)
from segbench.app.overrides import multirun_arguments
from segbench.errors import Interrupted, SegbenchError, os_error_message, segbench_cause
from segbench.trust import check_config


@dataclass(frozen=True)
class Verb:
    target: str  # "module:function" taking the composed DictConfig
    config: str  # config name under conf/
    help: str
    actions: tuple[str, ...] = ()  # sub-commands: `segbench data check` becomes action=check
    multirun: bool = False  # always run as a Hydra multirun (segbench sweep)


VERBS: dict[str, Verb] = {
    "train": Verb("segbench.app.train:run", "train", "train a model (model=, data=, optim=, schedule=, trainer=, experiment=)"),
    "eval": Verb("segbench.app.evaluate:run", "eval", "evaluate a run dir or checkpoint (run=<dir> | ckpt=<file>), add the scores to its run.json"),
    "predict": Verb("segbench.app.predict:run", "predict",
                    "label your own images with a run (run=<dir> | ckpt=<file> input=<image|folder|glob> output=<dir>)"),
    "report": Verb("segbench.app.report:run", "report", "published vs measured over every run.json below runs=<dir>"),
    "runs": Verb("segbench.app.runs:run", "runs", "list the runs below runs=<dir>: status, iterations, best mIoU"),
    "sweep": Verb("segbench.app.sweep:run", "sweep", "train a grid of models x datasets x overrides (Hydra multirun), then one table",
                  multirun=True),
    "bench": Verb("segbench.app.bench:run", "bench", "params, FLOPs, latency, training step time and memory of a model (model=<name>|all)"),
    "data": Verb("segbench.app.datatool:run", "datatool",
                 "download | check | prepare | stats a dataset tree (data=<name> data.root=<dir>)",
                 actions=("download", "check", "prepare", "stats")),
}


def say(line: str) -> None:
    """One line to stderr in one write: under torchrun every rank prints its message to the same
    pipe, and print's separate write of the newline let two ranks' lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


_DEBUG = False  # HYDRA_FULL_ERROR=1 from the user: keep every traceback

def usage() -> str:
    lines = ["usage: segbench <verb> [hydra overrides] [--cfg job] [--multirun] [--help]", "", "verbs:"]
    width = max(map(len, VERBS))
    lines += [f"  {name:<{width}}  {verb.help}" for name, verb in VERBS.items()]
    lines += ["", "`segbench <verb> --help` shows that verb's config groups and main keys, each described."]
    return "\n".join(lines)


def user_error(err: BaseException) -> str | None:
    """The one message for an error the user can cause (None: a bug, keep its traceback).

    Errors re-raised from DataLoader workers carry the worker's "Original Traceback" inside
    their message; only the original message is kept."""
    if isinstance(err, (HydraException, OmegaConfBaseException)):  # (Hydra's MissingConfigException is an IOError)
        cause = segbench_cause(err)
        if cause is not None:  # raised by a resolver, e.g. ${class_weights:<missing file>}
            key = getattr(err, "full_key", None)
            return f"{key}: {cause}" if key else str(cause)
        text = str(err).strip()
        if getattr(err, "override", None):  # OverrideParseException: say which argument
            return (f"cannot parse the override '{err.override}': {text}. Quote values with special characters, "
                    f"see https://hydra.cc/docs/advanced/override_grammar/basic/")
        if isinstance(err.__cause__, OmegaConfBaseException) and str(err.__cause__) not in text:
            text += f"\n{err.__cause__}"
        return text.replace("\nSee https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details", "")
    if isinstance(err, OSError) and not isinstance(err, SegbenchError):
        return os_error_message(err)
    if isinstance(err, SegbenchError):
        return strip_worker_traceback(str(err))
    return None


def strip_worker_traceback(text: str) -> str:
    marker = "Original Traceback (most recent call last):"
    if marker not in text:
        return text
    lines = text.split(marker, 1)[1].splitlines()
    # the traceback's last unindented line is "<module>.<Error>: <message>", the message may go on
    for i, line in enumerate(lines):
        if line and not line[0].isspace() and ": " in line and not line.startswith("Traceback"):
            return "\n".join([line.split(": ", 1)[1], *lines[i + 1:]]).strip()
    return text


def run_verb(name: str, cfg: DictConfig):
    """Call the verb's function; a failure removes the output dir Hydra made for nothing, an
    interruption exits 128 + signal, user errors reach :func:`main` (one message, status 2)."""
    module, function = VERBS[name].target.split(":")
    try:
        check_config(cfg, "the command line")  # `model._target_=os.system` too: one rule for every config
        return getattr(importlib.import_module(module), function)(cfg)
    except Interrupted as stop:
        if str(stop):
            say(f"segbench {name}: {stop}")
        sys.exit(stop.exit_status)
    except BaseException as err:
        if not VERBS[name].multirun:
            discard_new_output_dir(HydraConfig.get().runtime.output_dir)
        message = None if _DEBUG or not isinstance(err, Exception) else user_error(err)
        if message is None:
            raise
        say(f"segbench {name}: error: {message}")
        sys.exit(2)


def _print_verb_help(name: str, verb: Verb, args: list[str]) -> bool:
    """The verb's own groups and main keys, described by its config files (segbench/app/help.py); False = let Hydra report
    whatever stopped the composition."""
    try:
        text = verb_help(name, verb, [a for a in args if a not in ("-h", "--help")])
    except Exception:  # noqa: BLE001 - Hydra's own --help then shows its message for the bad override
        return False
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `segbench train --help | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True


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
    if {"-h", "--help"} & set(args) and _print_verb_help(name, verb, args):
        return
    if verb.actions and args and args[0] in verb.actions:
        args = [f"action={args[0]}", *args[1:]]
    elif verb.actions and args and "=" not in args[0] and not args[0].startswith("-"):
        print(f"segbench {name}: unknown action '{args[0]}'; choose one of {', '.join(verb.actions)}",
              file=sys.stderr)
        sys.exit(2)
    if verb.multirun and not {"-m", "--multirun", "--cfg", "-c", "--help", "-h"} & set(args):
        args = ["--multirun", *args]
    if {"-m", "--multirun"} & set(args):  # job folders are named by the swept keys
        args = multirun_arguments(args)
    # Hydra parses sys.argv itself; give it the verb's arguments only.
    sys.argv = [f"segbench {name}", *args]
    # HYDRA_FULL_ERROR=1 set by the user: every traceback in full. Set by us (children of
    # torchrun inherit it): Hydra re-raises and user errors become one line here.
    global _DEBUG
    debugging = _DEBUG = os.environ.get("HYDRA_FULL_ERROR") == "1" and not os.environ.get("SEGBENCH_HYDRA_RERAISE")
    os.environ["HYDRA_FULL_ERROR"] = os.environ["SEGBENCH_HYDRA_RERAISE"] = "1"
    app = hydra.main(version_base="1.3", config_path="conf", config_name=VERBS[name].config)(
        lambda cfg: run_verb(name, cfg)
    )
    try:
        app()
    except KeyboardInterrupt:
        print(f"segbench {name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 -- sorted into user errors and bugs just below
        message = None if debugging else user_error(err)
        if message is None:
            raise
        say(f"segbench {name}: error: {message}")
        sys.exit(2)
    finally:
        os.environ["HYDRA_FULL_ERROR"] = "1" if debugging else "0"
        os.environ.pop("SEGBENCH_HYDRA_RERAISE", None)


if __name__ == "__main__":
    main()
