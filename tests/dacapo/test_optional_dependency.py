"""DaCapo is an optional extra: importing dacapo-store never imports it, and only the
integration module asks for it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

MODULES_WITHOUT_DACAPO = (
    "dacapo_store",
    "dacapo_store.cli",
    "dacapo_store.integrations",
    "dacapo_store.integrations.dacapo_files",
    "dacapo_store.integrations.dacapo_import",
    "dacapo_store.integrations.dacapo_scores",
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)


def test_importing_dacapo_store_never_imports_dacapo() -> None:
    result = run_python(
        f"""
        import importlib, sys
        for name in {MODULES_WITHOUT_DACAPO!r}:
            importlib.import_module(name)
        loaded = [name for name, module in sys.modules.items() if module is not None]
        print(sorted(name for name in loaded if name == "dacapo" or name.startswith("dacapo.")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_integration_without_dacapo_says_how_to_install_it() -> None:
    result = run_python(
        """
        import sys
        sys.modules["dacapo"] = None  # as if DaCapo were not installed
        try:
            import dacapo_store.integrations.dacapo
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'dacapo-store[dacapo]'" in result.stdout


def test_a_module_dacapo_imports_that_is_missing_is_named_not_dacapo() -> None:
    if importlib.util.find_spec("dacapo") is None:
        pytest.skip("DaCapo is not installed")
    result = run_python(
        """
        import sys
        sys.modules["fibsem_tools"] = None  # DaCapo installed, one of its import-time imports not
        try:
            import dacapo_store.integrations.dacapo
        except ImportError as error:
            print(type(error).__name__, error.name, error)
        """
    )
    assert result.returncode == 0, result.stderr
    kind, name, message = result.stdout.split(" ", 2)
    assert kind == "ModuleNotFoundError" and name.startswith("fibsem_tools")
    assert message.startswith(f"DaCapo is installed, but importing it failed: no module named {name!r}")
    assert "pip install 'dacapo-store[dacapo]'" not in message


def test_dacapo_is_an_optional_extra_only() -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert not any("dacapo" in requirement for requirement in project["dependencies"])
    assert project["optional-dependencies"]["dacapo"] == ["dacapo-ml>=0.3.5,<0.4"]
