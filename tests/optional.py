"""Optional test dependencies: skipped with a reason on a developer's machine, required in CI.

``.ci/run`` installs every optional tool (torch, transformers, mpi4py...) and sets ``CI``, so there a
missing one fails the test instead of silently skipping it."""

import importlib
import os

import pytest


def optional_import(name: str, reason: str):
    """The module ``name``; without it the test skips (``reason``), except in CI, where it fails."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=reason)
