"""Datasets in their real on-disk layouts, and the ``segbench data`` verb that fetches and checks them.

Readers (each module owns its classes, palette and label encoding): ``base`` (the shared
dataset shape), ``codec`` (on-disk values ↔ train ids), ``voc``, ``cityscapes``, ``camvid``,
``sunrgbd``, ``isbi``, ``synthetic``; ``transforms`` (albumentations pipelines); ``fixtures``
(tiny copies of every layout, for the smoke pipeline and the tests).

``segbench data``: ``commands`` dispatches to one module per action — ``check``, ``stats``,
``prepare`` (converters ``prepare_voc``, ``prepare_cityscapes``, ``prepare_sunrgbd`` on top of
``conversion``), ``download`` (with ``fetch`` and ``unpack``); ``walk`` is what check and stats
share. Imports point one way: actions → converters → readers → ``codec``.
"""
