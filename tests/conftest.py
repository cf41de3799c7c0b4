"""Shared test set-up: gin is cleared around each test; XLA compilations are
cached on disk for the session, so configs that compile the same program
(e.g. the 6-, 12- and 24-layer configs once shrunk) compile it once."""

from trax_favor import cli

cli.quiet_start()  # trax with the fixes, without TensorFlow's and gym's noise

# pylint: disable=g-import-not-at-top,wrong-import-position
import gin
import jax
import pytest

import gin_helpers
# pylint: enable=g-import-not-at-top,wrong-import-position


def pytest_configure(config):
  cache_dir = config.cache.mkdir('xla_compilation_cache')
  jax.config.update('jax_compilation_cache_dir', str(cache_dir))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(name='in_repo')
def fixture_in_repo(monkeypatch, pytestconfig):
  """Configs are given relative to the repo root; children see the repo."""
  monkeypatch.chdir(gin_helpers.REPO)
  monkeypatch.setenv('PYTHONPATH', gin_helpers.REPO)
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(
      pytestconfig.cache.mkdir('xla_compilation_cache')))
