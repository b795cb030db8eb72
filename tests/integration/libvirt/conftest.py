# The fixtures of this layer. Once tests/conftest.py lists "tests.support.fixtures_libvirt" in
# pytest_plugins (and the repository root is importable, e.g. `pythonpath = .` in pytest.ini),
# this file is redundant and should go: pytest only honours pytest_plugins in the top-level
# conftest, so the registration cannot live here.
import pathlib
import sys

# `python -m pytest` from the repository root puts it on sys.path; bare `pytest` does not.
REPO = str(pathlib.Path(__file__).resolve().parents[3])
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support.fixtures_libvirt import libvirt_rig, unique_name  # noqa: E402,F401
