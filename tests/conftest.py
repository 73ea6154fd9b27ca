"""Shared test settings: float32 matmuls everywhere, the real data folder, slow-test marker.

Multi-device tests run in subprocesses with 8 fake CPU devices (tests/test_parallel.py), so the rest of the
suite sees one device."""
from pathlib import Path

import pytest

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RAW_DATA = SHARED_DATA / "raw"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long experiments; CI runs their short versions only (-m 'not slow').")


@pytest.fixture(scope="session")
def raw_data_dir():
  if not RAW_DATA.is_dir():
    pytest.fail(f"real data folder {RAW_DATA} is missing: tests read ../shared/data/raw beside the checkout")
  return RAW_DATA
