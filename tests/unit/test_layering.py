"""The library layers never reach up: models, data, engine and metrics import neither the app
layer (verbs, cli), the ``api`` facade, Hydra's runtime, nor ``tests`` (checked statically,
function-level imports included, by walking each module's syntax tree)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "segbench"
LIBRARY = ["models", "engine", "data", "metrics", "io.py", "errors.py", "record.py",
           "tables.py", "parts.py", "trust.py"]
FORBIDDEN = ("segbench.cli", "segbench.app", "segbench.api",
             "hydra.core", "hydra.main", "hydra.initialize", "hydra.compose", "tests")


def library_files():
    for entry in LIBRARY:
        path = PACKAGE / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            yield file.relative_to(PACKAGE).as_posix()


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


def package_modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_verb_lives_in_the_app_folder():
    """``cli.py`` only dispatches: each verb's function is a module of ``segbench/app/``."""
    from segbench.cli import VERBS

    homes = {name: verb.target.split(":")[0] for name, verb in VERBS.items()}
    assert all(module.startswith("segbench.app.") for module in homes.values()), homes
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top_level == ["__init__.py", "__main__.py", "api.py", "cli.py", "errors.py", "io.py",
                         "parts.py", "record.py", "tables.py", "trust.py"]


def test_nothing_but_main_imports_the_cli():
    """The dispatcher is the top: no module (the app layer included) reaches back up into it."""
    importing = sorted(file.relative_to(PACKAGE).as_posix() for file in package_modules()
                       if any(name == "segbench.cli" or name.startswith("segbench.cli.")
                              for name in imported_modules(file.read_text())))
    assert importing == ["__main__.py"]


def test_the_app_layer_imports_no_facade():
    """Verbs build on the library directly; ``api.py`` is a facade for scripts above them."""
    bad = {file.relative_to(PACKAGE).as_posix(): sorted(n for n in imported_modules(file.read_text())
                                                       if n == "segbench.api" or n.startswith("segbench.api."))
           for file in (PACKAGE / "app").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def deferred_imports_without_a_reason(source: str) -> list[int]:
    """Line numbers of imports inside functions that carry no ``#`` comment saying why."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)) and "#" not in lines[sub.lineno - 1]:
                    found.append(sub.lineno)
    return sorted(set(found))


def test_imports_are_at_module_top_unless_deferred_on_purpose():
    """An import inside a function hides an edge from these tests and from the reader; the few
    deferred on purpose (a heavy or optional package, a cycle broken deliberately) say why."""
    bad = {file.relative_to(PACKAGE).as_posix(): lines for file in package_modules()
           if (lines := deferred_imports_without_a_reason(file.read_text()))}
    assert not bad, f"function-level imports without a reason: {bad}"


def test_the_deferred_import_check_sees_a_silent_one():
    source = "import os\ndef f():\n    import json\n    import timm  # optional extra\n"
    assert deferred_imports_without_a_reason(source) == [3]
