"""Datasets in their real on-disk layouts, and the ``segbench data`` verb that fetches and checks them.

Readers (each module owns its classes, palette and label encoding): ``base`` (the shared
dataset shape), ``codec`` (on-disk values ↔ train ids), ``voc``, ``cityscapes``, ``camvid``,
``sunrgbd``, ``isbi``, ``synthetic``; ``transforms`` (albumentations pipelines); ``fixtures``
(tiny copies of every layout, for the smoke pipeline and the tests). Each reader class carries
its dataset's ``card`` (``card``: its download entry, converter and fixture maker), found
through ``conf/data/<name>.yaml``'s ``dataset._target_``.

Converters for the datasets that need a one-off conversion (``prepare_voc``,
``prepare_cityscapes``, ``prepare_sunrgbd`` on top of ``conversion``), the download plumbing
(``fetch``, ``unpack``) and ``walk`` (a dataset's samples in forked workers): the library the
``segbench data`` verb (:mod:`segbench.app.datatool`) drives. Imports point one way:
converters → readers → ``codec``.
"""
