"""app.py loaded as a module (it is a script, not in a package), for the tests that call its
parser and `main` in their own process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

APP = Path(__file__).resolve().parents[1] / "app.py"


def load_app() -> ModuleType:
    """A fresh module of app.py, as `python app.py` defines it (its `__main__` block not run)."""
    spec = importlib.util.spec_from_file_location("app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
