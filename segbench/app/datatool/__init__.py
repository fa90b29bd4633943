"""``segbench data download | check | prepare | stats data=<name> data.root=<dir>``.

One module per action:

* ``download`` (:mod:`.download`) fetches, verifies and unpacks the public
  archives, then prepares and checks;
* ``check`` (:mod:`.check`) lists the splits' counts and every missing,
  unreadable or mis-encoded file; exit status 1 if any;
* ``prepare`` (:mod:`.prepare`) runs the dataset's one-off conversion;
* ``stats`` (:mod:`.stats`) counts class pixels and writes SegNet's
  median-frequency class weights.
"""
from __future__ import annotations

from omegaconf import DictConfig

from segbench.app.datatool import check, download, prepare, stats
from segbench.errors import SegbenchError

ACTIONS = {"check": check.check, "prepare": prepare.prepare_dataset, "stats": stats.stats, "download": download.download}


def run(cfg: DictConfig):
    action = cfg.get("action", "check")
    if action not in ACTIONS:
        raise SegbenchError(f"unknown data action '{action}'; use one of: {', '.join(ACTIONS)}")
    return ACTIONS[action](cfg)
