"""segbench: faithful, config-driven semantic-segmentation baselines and benchmarks.

``build_model`` / ``build_dataset`` (:mod:`segbench.api`) load on first use (PEP 562): importing
a stdlib-level module such as :mod:`segbench.parts` or :mod:`segbench.errors` must not need Hydra,
so the unpacker runs on a GPU machine before the missing packages are installed from its wheels.
"""
__all__ = ["build_model", "build_dataset"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from segbench import api  # on first use (PEP 562), see above

        return getattr(api, name)
    raise AttributeError(f"module 'segbench' has no attribute {name!r}")
