"""Fixtures shared by the client tests."""

import os
import shutil
import tempfile

import pytest


@pytest.fixture
def data_dir():
    """A fresh data dir for one test's server, removed afterwards (kept,
    logs and all, with TESSERA_TEST_KEEP=1)."""
    d = tempfile.mkdtemp(prefix="tessera-test-")
    yield d
    if os.environ.get("TESSERA_TEST_KEEP") == "1":
        print(f"kept {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)
