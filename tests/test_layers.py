"""The package's layers: database drivers are imported only by their backend, and the command
line and ``doctor`` reach a backend only through the stores' public API."""

from __future__ import annotations

import ast
from pathlib import Path

import dacapo_store

PACKAGE = Path(dacapo_store.__file__).parent
DRIVERS = {
    "sqlite3": ("local", "testing"),
    "pymongo": ("mongo", "testing"),
    "gridfs": ("mongo", "testing"),
    "bson": ("mongo", "testing"),
}
"""Each driver module and the subpackages that may import it."""
BACKENDS = ("local", "mongo")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    package = ".".join(("dacapo_store", *path.relative_to(PACKAGE).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def subpackage(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def test_database_drivers_are_imported_only_by_their_backend() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in modules()
        for line, module in imports(path)
        if module.split(".")[0] in DRIVERS and subpackage(path) not in DRIVERS[module.split(".")[0]]
    ]
    assert wrong == []


def test_the_command_line_and_doctor_use_no_backend_internals() -> None:
    """They open stores through :func:`dacapo_store.open_store` (or the package's public names)
    and never import a backend module."""
    users = [*sorted((PACKAGE / "cli").glob("*.py")), PACKAGE / "maintenance" / "doctor.py"]
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in users
        for line, module in imports(path)
        if module.split(".")[:2] in (["dacapo_store", backend] for backend in BACKENDS)
    ]
    assert wrong == []


def test_maintenance_does_not_import_the_experiment_layer() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in sorted((PACKAGE / "maintenance").glob("*.py"))
        for line, module in imports(path)
        if module.startswith("dacapo_store.experiments")
    ]
    assert wrong == []
