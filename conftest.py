"""Test-wide environment: hermetic and offline. Plugin auto-loading is off unless a test is about it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
