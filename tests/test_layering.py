"""Layering: geometry (numerics, manifolds) never imports training, models or samplers."""

import ast
from pathlib import Path

import implicit_geom

PACKAGE = Path(implicit_geom.__file__).parent
LOWER = ("numerics", "manifolds")
UPPER = ("learning", "models", "sampling", "evaluation", "cli", "metrics", "plotting",
         "datasets")


def imported_modules(source, package):
    """Absolute names of every module ``source`` (a module of ``package``) imports,
    at top level or inside functions."""
    tree = ast.parse(source)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            names.append(stem)
            names += [f"{stem}.{alias.name}" for alias in node.names]
    return names


def offenders(layers, banned):
    """``"path imports name"`` for every import from ``layers`` of a package in ``banned``."""
    found = []
    for layer in layers:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            package = ".".join(("implicit_geom", *path.relative_to(PACKAGE).parent.parts))
            for name in imported_modules(path.read_text(), package):
                parts = name.split(".")
                if parts[0] == "implicit_geom" and len(parts) > 1 and parts[1] in banned:
                    found.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return found


def test_geometry_imports_no_training_code():
    # Catches e.g. manifolds/neural.py importing learning.trainer (as it once
    # did), also through a relative or a function-local import.
    found = offenders(LOWER, UPPER)
    assert not found, "geometry imports upper layers:\n" + "\n".join(found)


def test_the_checker_sees_relative_and_local_imports():
    # The checker itself must flag the patterns it is meant to catch.
    for source in ("def f():\n    from ..learning.trainer import Trainer\n",
                   "from .. import sampling\n",
                   "import implicit_geom.models.ebm\n"):
        names = imported_modules(source, "implicit_geom.manifolds")
        assert any(n.split(".")[1] in UPPER for n in names if n.startswith("implicit_geom.")), (
            source, names)
    assert imported_modules("from .implicit import X\n", "implicit_geom.manifolds") == [
        "implicit_geom.manifolds.implicit", "implicit_geom.manifolds.implicit.X"]


def test_sampling_imports_no_metrics_models_or_training():
    # Samplers sit below models and evaluation: catches sampling/ importing
    # metrics (effective_sample_size lives in sampling.diagnostics), models,
    # learning or evaluation.
    found = offenders(("sampling",), ("metrics", "models", "learning", "evaluation", "cli"))
    assert not found, "sampling imports upper layers:\n" + "\n".join(found)
