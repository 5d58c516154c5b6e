import pytest

from tests.dss_fixture import write_dss_fixture


@pytest.fixture(scope="session")
def dss_fixture_dir(tmp_path_factory):
  """The invented DSS release (tests/dss_fixture.py), written once per session; tests must not modify it."""
  return write_dss_fixture(tmp_path_factory.mktemp("dss_fixture"))
