"""``segbench data download | check | prepare | stats data=<name> data.root=<dir>``.

One module per action:

* ``download`` (:mod:`segbench.data.download`) fetches, verifies and unpacks the public
  archives, then prepares and checks;
* ``check`` (:mod:`segbench.data.check`) lists the splits' counts and every missing,
  unreadable or mis-encoded file; exit status 1 if any;
* ``prepare`` (:mod:`segbench.data.prepare`) runs the dataset's one-off conversion;
* ``stats`` (:mod:`segbench.data.stats`) counts class pixels and writes SegNet's
  median-frequency class weights.
"""
from __future__ import annotations

from omegaconf import DictConfig

from segbench.data.check import check
from segbench.data.download import download
from segbench.data.prepare import prepare_dataset
from segbench.data.stats import stats
from segbench.errors import SegbenchError

ACTIONS = {"check": check, "prepare": prepare_dataset, "stats": stats, "download": download}


def run(cfg: DictConfig):
    action = cfg.get("action", "check")
    if action not in ACTIONS:
        raise SegbenchError(f"unknown data action '{action}'; use one of: {', '.join(ACTIONS)}")
    return ACTIONS[action](cfg)
