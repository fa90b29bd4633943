"""The class-weight file ``segbench data stats`` writes, read back for ``loss.class_weights``
(``${class_weights:<file>}`` in a config). Light on purpose: the resolver that calls it is
registered by every command, ``segbench --help`` included."""
from __future__ import annotations

from pathlib import Path

from segbench.errors import SegbenchError
from segbench.io import read_json


def load_class_weights(path: str | Path) -> list[float]:
    """The ``class_weights`` list of a ``segbench data stats`` file (or of a bare JSON list)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SegbenchError(f"class-weight file not found: {path} (write it there with `segbench data stats "
                            f"data=<dataset> data.root=<its folder> stats.output={path}`)")
    data = read_json(path)  # {} when unreadable or not JSON: refused below
    weights = data.get("class_weights") if isinstance(data, dict) else data
    if not isinstance(weights, list) or not all(isinstance(w, (int, float)) for w in weights):
        raise SegbenchError(f"{path} holds no 'class_weights' list of numbers (is it `segbench data stats` output?)")
    return [float(w) for w in weights]
