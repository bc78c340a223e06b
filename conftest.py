"""Test-wide environment: hermetic and offline. Plugin auto-loading is off unless a test is about it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"] = "1"


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def autoload_plugins():
    """Discover the installed plugins through their entry points (as the CLI does), for this module."""
    from latentbridge import plugins

    os.environ.pop("LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD", None)
    plugins.registries(refresh=True)
    yield
    os.environ["LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    plugins.registries(refresh=True)
