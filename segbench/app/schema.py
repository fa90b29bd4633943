"""Registers the config schemas (:mod:`segbench.engine.config`) in Hydra's ConfigStore, under the
names the YAML defaults lists use (``trainer_schema``, ``data_schema``, ``sgd_schema``,
``adamw_schema``, ``/schema/eval_protocol``). Imported by :mod:`segbench.app` so they are there
before any compose."""
from hydra.core.config_store import ConfigStore

from segbench.engine.config import SCHEMAS


def register() -> None:
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)


register()
