"""Shared test helpers."""

import os

import sluiceway

# The folder the tests imported sluiceway from: the installed package in CI
# (ci/test.sh installs it), corepy/ in a `make build` tree.
SLUICEWAY_PATH = os.path.dirname(os.path.dirname(os.path.abspath(sluiceway.__file__)))


def subprocess_env(**extra):
    """Environment for a child Python that must import the same sluiceway."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SLUICEWAY_PATH, env.get("PYTHONPATH")) if p)
    return env


def pytest_configure(config):
    """The sluiceway pytest plugin: loaded by its entry point when the
    package is installed, registered here when the tests run against a
    source tree (PYTHONPATH=corepy)."""
    import sluiceway.pytest_plugin as plugin

    if not config.pluginmanager.is_registered(plugin) and not config.pluginmanager.has_plugin("sluiceway"):
        config.pluginmanager.register(plugin, "sluiceway")
