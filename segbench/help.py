"""``segbench <verb> --help``: that verb's own help, composed from its config.

Hydra's generic ``--help`` lists every config group found on the search path (so every verb
showed the internal ``bench_all/model``, and ``eval`` offered ``model=``, which it rejects),
and names the app after the Python file or the inherited ``hydra.job.name`` ("cli is powered
by Hydra", "train is powered by Hydra" for sweep). Here the groups are the ones the verb's
defaults list actually selects (``hydra.runtime.choices``), with the options on disk, and the
config printed is the one the command line would run (``segbench train model=pspnet --help``
shows PSPNet's keys). Hydra's own help stays available as ``--hydra-help``.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from segbench.app import configs

INTERNAL_GROUPS = ("hydra", "bench_all")  # chosen by the code, not by the user


def verb_help(name: str, verb, args: list[str]) -> str:
    """The help text of ``segbench <name> [args]`` (``args`` without ``--help``)."""
    overrides = [a for a in args if not a.startswith("-")]
    if verb.actions and overrides and overrides[0] in verb.actions:
        overrides[0] = f"action={overrides[0]}"
    cfg = configs.compose(verb.config, overrides, with_choices=True)
    choices = OmegaConf.to_container(cfg.pop("choices"))
    groups = sorted(g for g in choices if not g.startswith(INTERNAL_GROUPS))
    with_actions = f" {{{','.join(verb.actions)}}}" if verb.actions else ""
    lines = [f"segbench {name}: {verb.help}", "",
             f"usage: segbench {name}{with_actions} [group=option] [key=value ...] [--cfg job] [--multirun]"]
    if verb.actions:
        lines += ["", "== Actions ==", f"  segbench {name} <action>: {' | '.join(verb.actions)}"
                  f" (default: {cfg.get('action', verb.actions[0])})"]
    if groups:
        lines += ["", "== Configuration groups ==", "Compose your configuration from those groups (group=option)", ""]
        for group in groups:
            current = choices[group]
            options = ", ".join(f"{o} (current)" if o == current else o for o in configs.available(group))
            lines.append(f"{group}: {options}")
    lines += ["", "== Config ==", "Override anything in the config (foo.bar=value)", "",
              OmegaConf.to_yaml(cfg).rstrip(), "",
              f"Hydra's own options (launchers, sweepers, logging): segbench {name} --hydra-help"]
    return "\n".join(lines)
