"""The chaos suite (`make chaos`): slow fault tests that print their
figures. They reuse the integration suite's fixtures and helpers: this file
loads tests/integration/conftest.py and re-exports all of it, so
`from conftest import ...` works here as it does there.

Run: make chaos   (or SLUICE_BIN=build/sluice /usr/bin/python3 -m pytest -q -s tests/chaos)

SLUICE_TEST_WORKERS=N works here too (the factory is the integration
suite's): every engine whose config does not set workers runs with N. The
disk-full and kill -9 cases set workers themselves (1 and 2).
"""
import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parent.parent / "integration"
sys.path.insert(0, str(_INTEGRATION))

_spec = importlib.util.spec_from_file_location("sl_integration",
                                               _INTEGRATION / "conftest.py")
_mod = importlib.util.module_from_spec(_spec)
sys.modules["sl_integration"] = _mod
_spec.loader.exec_module(_mod)

from sl_integration import *  # noqa: E402,F401,F403
from sl_integration import sluice  # noqa: E402,F401  (the fixture)
