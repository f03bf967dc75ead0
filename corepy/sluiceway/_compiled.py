"""Loads sluiceway's compiled modules, and fails loudly when they are missing.

There is no pure-Python fallback for the engine: a checkout that was never
built, or a wheel for another Python, must say so at import time instead of
running slowly or half-working.
"""

import importlib
import sysconfig

_HINT = (
    "sluiceway's compiled module {name!r} could not be imported ({exc}).\n"
    "  Installed from a source checkout? Build it first: `pip install .` (or, for "
    "development, `pip install -e .` / `make build`).\n"
    "  Installed from a wheel? Check the wheel matches this Python "
    "(cp{major}{minor}, manylinux) and reinstall it."
)


def load(name):
    """Import ``sluiceway.<name>`` or raise ImportError that says how to fix it."""
    try:
        return importlib.import_module("sluiceway." + name)
    except ImportError as exc:
        import sys

        raise ImportError(
            _HINT.format(name=name, exc=exc, major=sys.version_info[0], minor=sys.version_info[1])
        ) from exc


FREE_THREADED_MESSAGE = (
    "sluiceway does not support free-threaded CPython ({version}t) yet: its compiled "
    "engine, pools and free lists rely on the GIL. Use the regular build of CPython "
    "{version} (python{version}, not python{version}t); the same wheel tags do not apply.")


def check_interpreter(get_config_var=sysconfig.get_config_var, version=None):
    """Refuse a free-threaded CPython build with a clear ImportError (instead
    of the engine running with the GIL silently re-enabled, or worse)."""
    if get_config_var("Py_GIL_DISABLED"):
        import sys

        v = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
        raise ImportError(FREE_THREADED_MESSAGE.format(version=v))
