"""``segbench <verb> --help``: what the verb does, its config groups and its main keys, each
with the one-line description its config file gives it.

The descriptions are the configs' own comments, so help cannot drift from the files: a group
option is described by the first sentence of its file's header comment, a key by the trailing
``# ...`` comment on its line (continued on the comment lines aligned below it). The files read
are the ones the command line would compose: the verb's config, the option chosen in each group
(``hydra.runtime.choices``) and the files their defaults lists pull in (``unet_small`` ->
``unet``, ``sweep`` -> ``train``). Values are the composed ones, so ``segbench train
model=pspnet --help`` shows PSPNet's keys and settings. The whole config is one
``--cfg job`` away; Hydra's own help stays available as ``--hydra-help``.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from segbench.app import configs

INTERNAL_GROUPS = ("hydra", "bench_all")  # chosen by the code, not by the user
WIDTH = 100  # wrap descriptions here
KEY_COLUMN = 40  # descriptions start here (on the next line when `key=value` is longer)
MAX_VALUE = 80  # a longer mapping shows its first item only (the rest: --cfg job)
MAX_DEPTH = 2  # undocumented keys deeper than this below their file's package are left to --cfg job

_KEY = re.compile(r"^(\s*)([\w.@-]+):(.*)$")


@dataclass(frozen=True)
class Key:
    path: str  # dotted, from the config root
    depth: int  # levels below the package of the file that declares it
    leaf: bool  # a value, not a mapping
    description: str


def split_comment(text: str) -> tuple[str, str | None]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes is part of the value."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), None


def header(path: Path) -> str:
    """The first sentence of a config file's leading comment (its ``# @package`` line skipped)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text or text.startswith("segbench "):  # a blank comment line or the examples end it
            break
        lines.append(text)
    text = " ".join(lines)
    match = re.search(r"\.(\s|$)", text)
    return text[: match.start() + 1] if match else text


def examples(path: Path) -> list[str]:
    """The ``#   segbench ...`` example command lines of a config file's leading comment."""
    found = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("segbench ") and line.startswith("#  "):
            found.append(text)
    return found


def package(path: Path, group: str | None) -> str:
    """Where a file's keys land: its ``# @package`` line, else its group (``model`` ...), else the root."""
    for line in path.read_text().splitlines():
        match = re.match(r"#\s*@package\s+(\S+)", line)
        if match:
            return "" if match.group(1) == "_global_" else match.group(1)
        if line and not line.startswith("#"):
            break
    return (group or "").replace("/", ".")


def declared_keys(path: Path, prefix: str) -> list[Key]:
    """Every key a YAML file declares, with its trailing comment (the defaults list skipped)."""
    keys: list[Key] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    comment_column = None  # where the last key's comment started: aligned comment lines continue it
    for line in path.read_text().splitlines():
        stripped = line.lstrip()
        if stripped.startswith("#"):
            if comment_column is not None and len(line) - len(stripped) == comment_column:
                last = keys[-1]
                keys[-1] = Key(last.path, last.depth, last.leaf, f"{last.description} {stripped[1:].strip()}")
            else:
                comment_column = None
            continue
        comment_column = None
        match = _KEY.match(line)
        if not match or stripped.startswith("-"):
            continue
        indent, name, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = split_comment(rest)
        names = [k for _, k in stack] + [name]
        if not value:
            stack.append((indent, name))
        if names[0] in ("defaults", "hydra"):
            continue
        keys.append(Key(".".join(filter(None, [prefix, *names])), len(names), bool(value), comment or ""))
        if comment is not None:
            comment_column = line.index("#", len(line) - len(rest) + len(value))
    return keys


def bare_defaults(path: Path) -> list[Path]:
    """Files a defaults list pulls in by bare name (``- unet``): siblings of ``path``."""
    found, inside = [], False
    for line in path.read_text().splitlines():
        if re.match(r"^defaults:", line):
            inside = True
            continue
        if inside:
            match = re.match(r"^\s*-\s*([\w/]+)\s*(#.*)?$", line)
            if match and match.group(1) != "_self_":
                found.append(path.parent / f"{match.group(1)}.yaml")
            elif not line.startswith((" ", "-")) and line.strip():
                break
    return [p for p in found if p.exists()]


def config_files(path: Path) -> list[Path]:
    """``path`` and, after it, every file its defaults list pulls in by bare name (recursively)."""
    files = [path]
    for base in bare_defaults(path):
        files += [f for f in config_files(base) if f not in files]
    return files


def describe(verb_config: str, choices: dict) -> dict[str, Key]:
    """Every key declared by the files this command composes, by path, in file order: the verb's
    own keys, then each group's in the order of the verb's defaults list. A file's own comment
    wins over the one of the file it builds on (``unet_small`` over ``unet``)."""
    verb_file = configs.CONF_DIR / f"{verb_config}.yaml"
    sources = [config_files(f)[::-1] for f in config_files(verb_file)[::-1]]
    listed = "\n".join(f.read_text() for f in config_files(verb_file))
    for group in sorted(choices, key=lambda g: (listed.find(f"- {g}:") % (len(listed) + 1), g)):
        chosen = configs.CONF_DIR / group / f"{choices[group]}.yaml"
        if not group.startswith(INTERNAL_GROUPS) and choices[group] and chosen.exists():
            sources.append(config_files(chosen)[::-1])
    keys: dict[str, Key] = {}
    for files in sources:
        for path in files:  # the base first: its order; the file built on it may describe better
            group = None if path.parent == configs.CONF_DIR else path.parent.relative_to(configs.CONF_DIR).as_posix()
            for key in declared_keys(path, package(path, group)):
                known = keys.get(key.path)
                keys[key.path] = key if known is None or key.description else known
    return keys


def format_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{k}: {format_value(v)}" for k, v in value.items()]
        text = "{" + ", ".join(items) + "}"
        return text if len(text) <= MAX_VALUE or len(items) < 2 else "{" + items[0] + ", ...}"  # e.g. paper=
    return str(value)


def lookup(cfg, raw: dict, path: str):
    """The composed value at ``path``, resolved where it can be (``${data.num_classes}`` -> 21)
    and as written where it needs a running verb (``run_dir``); ``KeyError`` when absent."""
    value = raw
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            raise KeyError(path)
        value = value[name]
    try:
        resolved = OmegaConf.select(cfg, path)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} or ${now:...} outside a running verb
        return value
    return OmegaConf.to_container(resolved, resolve=False) if OmegaConf.is_config(resolved) else resolved


def key_lines(cfg, keys: dict[str, Key]) -> list[str]:
    """``key=value   description`` for the main keys: every described one, and the undescribed
    ones near the top of their file (deeper, undescribed settings are in ``--cfg job``)."""
    lines, raw = [], OmegaConf.to_container(cfg, resolve=False)
    for key in keys.values():
        if not key.leaf or key.path.rsplit(".", 1)[-1].startswith("_"):
            continue
        if not key.description and key.depth > MAX_DEPTH:
            continue
        try:
            value = lookup(cfg, raw, key.path)
        except KeyError:  # declared by a file, removed by what came after it
            continue
        lines += entry(f"{key.path}={format_value(value)}", key.description)
    return lines


def entry(term: str, description: str) -> list[str]:
    """``  term   description`` with the description wrapped at :data:`WIDTH` from :data:`KEY_COLUMN`."""
    term = f"  {term}"
    if not description:
        return [term]
    indent = " " * KEY_COLUMN
    wrapped = textwrap.wrap(description, WIDTH, initial_indent=indent, subsequent_indent=indent,
                            break_on_hyphens=False)
    if len(term) < KEY_COLUMN - 1:
        wrapped[0] = term.ljust(KEY_COLUMN) + wrapped[0][KEY_COLUMN:]
        return wrapped
    return [term, *wrapped]


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
             f"usage: segbench {name}{with_actions} [group=option ...] [key=value ...] [--cfg job] [--multirun]"]
    shown = examples(configs.CONF_DIR / f"{verb.config}.yaml")
    if shown:
        lines += ["", "examples:", *(f"  {line}" for line in shown)]
    if verb.actions:
        lines += ["", "actions:", f"  segbench {name} <action>: {' | '.join(verb.actions)}"
                  f" (default: {cfg.get('action', verb.actions[0])})"]
    if groups:
        lines += ["", "groups (group=option; the current one described):"]
        for group in groups:
            current = choices[group]
            options = ", ".join(f"{o} (current)" if o == current else o for o in configs.available(group))
            lines += textwrap.wrap(f"{group}: {options}", WIDTH, initial_indent="  ", subsequent_indent="      ")
            chosen = configs.CONF_DIR / group / f"{current}.yaml"
            if current and chosen.exists() and header(chosen):
                lines += textwrap.wrap(header(chosen), WIDTH, initial_indent="      ", subsequent_indent="      ")
    lines += ["", f"main keys (key=value, as this command line composes them; every key: segbench {name} --cfg job):"]
    lines += key_lines(cfg, describe(verb.config, choices))
    lines += ["", f"Hydra's own options (launchers, sweepers, logging): segbench {name} --hydra-help"]
    return "\n".join(lines)
