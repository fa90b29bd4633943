"""segbench: faithful, config-driven semantic-segmentation baselines and benchmarks."""
from segbench.api import build_dataset, build_model

__all__ = ["build_model", "build_dataset"]
__version__ = "0.1.0"
