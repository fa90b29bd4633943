"""A dataset's card: everything segbench knows about a dataset besides how to read it.

Each reader class (``segbench/data/<x>.py``) declares its card as the class attribute
``card = DatasetCard(...)``: its public archives (:class:`DatasetDownload`), its one-off
converter and the function that writes its tiny fixture. The ``segbench data`` actions
(download, prepare) and :func:`segbench.data.fixtures.make_dataset` read the cards; they keep
no tables of their own. The cards are found through the dataset configs: every
``conf/data/<name>.yaml`` names its reader class in ``dataset._target_``, so a dataset is its
reader module and its config file, nothing else.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import get_class
from omegaconf import OmegaConf

from segbench.errors import SegbenchError
from segbench.trust import CONF_DIR


@dataclass(frozen=True)
class Archive:
    """One downloadable file: where it lives, how to check it, and where its content goes."""

    file: str                   # file name; a mirror serves it as <mirror>/<file>
    url: str | None             # None = needs an account: fetched by hand into <data.root>/downloads/
    checksum: str | None        # "md5:<hex>" / "sha256:<hex>", or None where none is published
    source: str                 # where the URL and the checksum come from
    size: str = ""              # approximate, as the source states it (for the user, not checked)
    move: tuple[tuple[str, str], ...] = ()  # (path in the archive, path under data.root) after extraction
    drop: tuple[str, ...] = ()  # top-level folders of the archive deleted after `move`


@dataclass(frozen=True)
class DatasetDownload:
    archives: tuple[Archive, ...]
    manual: str = ""            # what to do by hand (account-only datasets); printed when files are missing
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class DatasetCard:
    """What ``segbench data download / prepare`` and the fixtures need of one dataset."""

    # The public archives `segbench data download` fetches; None: nothing to download, and
    # `no_download` says why (printed after the list of downloadable datasets).
    download: DatasetDownload | None = None
    no_download: str = ""
    # "module:function" of the one-off conversion `segbench data prepare` runs (root, force=...),
    # or None: read as unpacked. Named, not imported: the converter imports the reader.
    converter: str | None = None
    # fixture(folder) writes the dataset's tiny copy in its real layout and returns its data.root
    # (segbench.data.fixtures); None: nothing to write (the set is generated on first use).
    fixture: Callable[[Path], Path] | None = None

    def converter_function(self) -> Callable[..., dict | None] | None:
        if self.converter is None:
            return None
        module, _, name = self.converter.partition(":")
        return getattr(importlib.import_module(module), name)


def card_of(reader: type) -> DatasetCard:
    """The card ``reader`` declares itself (a subclass does not inherit its parent's: another
    dataset has other archives)."""
    card = vars(reader).get("card")
    if not isinstance(card, DatasetCard):
        raise SegbenchError(f"{reader.__module__}.{reader.__qualname__} declares no dataset card "
                            f"(a class attribute `card = DatasetCard(...)`, segbench/data/card.py)")
    return card


def reader_classes(conf_dir: Path = CONF_DIR) -> dict[str, type]:
    """Every dataset config's reader class, by config name (``data=<name>``), in name order."""
    return {path.stem: get_class(OmegaConf.load(path).dataset._target_)
            for path in sorted((conf_dir / "data").glob("*.yaml"))}


@functools.cache
def cards() -> dict[str, DatasetCard]:
    """Every dataset's card, by config name, in name order."""
    return {name: card_of(reader) for name, reader in reader_classes().items()}
