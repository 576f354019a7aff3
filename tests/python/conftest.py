"""Fixtures shared by the client tests."""

import shutil
import tempfile

import pytest


@pytest.fixture
def data_dir():
    """A fresh data dir for one test's server, removed afterwards."""
    d = tempfile.mkdtemp(prefix="tessera-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)
