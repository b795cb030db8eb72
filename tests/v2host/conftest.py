"""The v2host layer's fixtures (a non-root conftest may not set pytest_plugins, so import them)."""
import pathlib
import sys

try:
    import tests.support.fixtures_v2host  # noqa: F401
except ImportError:  # run as `pytest` rather than `python -m pytest` from the checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from tests.support.fixtures_v2host import v2host, v2host_61, v2host_612, v2host_pool  # noqa: E402,F401
