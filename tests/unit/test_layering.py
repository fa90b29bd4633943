"""The library layers never reach up: models, data, engine and metrics import neither the app
layer (verbs, cli), the ``api`` facade, Hydra's runtime, nor ``tests`` (checked statically,
function-level imports included, by walking each module's syntax tree)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "segbench"
LIBRARY = ["models", "engine", "data", "metrics.py", "boundary.py", "isbi_metrics.py", "io.py", "errors.py", "record.py",
           "tables.py", "parts.py",
           "trust.py"]
# The app layer: the verbs and what only they use. The `segbench data` verb's actions (one module
# per sub-command, the dispatcher, and walk.py, what check and stats share) take the verb's
# composed config and live beside the dataset readers they drive; fetch/unpack/converters do not.
APP_MODULES = {"data/commands.py", "data/check.py", "data/stats.py", "data/prepare.py", "data/download.py",
               "data/walk.py"}
FORBIDDEN = ("segbench.cli", "segbench.app", "segbench.api", "segbench.report", "segbench.sweep",
             "segbench.predict", "segbench.runs", "segbench.help", "segbench.validate",
             "hydra.core", "hydra.main", "hydra.initialize", "hydra.compose", "tests")


def library_files():
    for entry in LIBRARY:
        path = PACKAGE / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            rel = file.relative_to(PACKAGE).as_posix()
            if rel not in APP_MODULES:
                yield rel


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("rel", list(library_files()))
def test_library_module_does_not_import_upwards(rel):
    imports = imported_modules((PACKAGE / rel).read_text())
    bad = sorted(name for name in imports if any(name == f or name.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, f"segbench/{rel} imports {bad}"


def test_the_walker_sees_function_level_imports():
    source = "def f():\n    from segbench.api import build_model\n    import hydra.core.hydra_config\n"
    assert {"segbench.api", "hydra.core.hydra_config"} <= imported_modules(source)


COMPOSE = ("hydra.compose", "hydra.initialize", "hydra.initialize_config_module", "hydra.initialize_config_dir",
           "hydra.core.global_hydra")


def test_only_app_configs_composes_configs():
    """One reader of configs outside a running verb: app/configs.py (Hydra's compose); the rest
    of the package asks it, so every config read resolves defaults the way ``segbench`` does."""
    composing = sorted(
        file.relative_to(PACKAGE).as_posix() for file in PACKAGE.rglob("*.py")
        if any(name in COMPOSE or name.startswith(tuple(c + "." for c in COMPOSE))
               for name in imported_modules(file.read_text())))
    assert composing == ["app/configs.py"]
