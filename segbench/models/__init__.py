"""Segmentation networks, one file per paper. Built from `conf/model/*.yaml` via `_target_`."""
