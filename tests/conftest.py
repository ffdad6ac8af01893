"""Test setup: eight fake CPU devices, configured before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402


def data_dir() -> pathlib.Path:
  """Returns the shared evaluation-data folder named by CATFLOW_DATA_DIR."""
  value = os.environ.get("CATFLOW_DATA_DIR")
  if not value:
    pytest.skip("CATFLOW_DATA_DIR is not set; point it at the evaluation-data folder")
  path = pathlib.Path(value)
  if not path.is_dir():
    raise FileNotFoundError(f"CATFLOW_DATA_DIR={value!r} is not a directory")
  return path


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  return data_dir()
