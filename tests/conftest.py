"""Shared test set-up: gin is cleared around each test; XLA compilations are
cached on disk for the session, so configs that compile the same program
(e.g. the 6-, 12- and 24-layer configs once shrunk) compile it once. The
cache is in pytest's cache folder, or, under `-p no:cacheprovider`, in a
temporary folder of the session."""

from trax_favor.run import cli

cli.quiet_start()  # trax with the fixes, without TensorFlow's and gym's noise

# pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile

import gin
import jax
import pytest

import gin_helpers
# pylint: enable=g-import-not-at-top,wrong-import-position


_TEMPORARY = []  # the session's cache folder without pytest's cache


def _xla_cache_dir(config):
  """pytest's cache folder for XLA, or a temporary one where the cache
  provider is off (`-p no:cacheprovider`)."""
  cache = getattr(config, 'cache', None)
  if cache is not None:
    return str(cache.mkdir('xla_compilation_cache'))
  if not _TEMPORARY:
    _TEMPORARY.append(tempfile.TemporaryDirectory(prefix='xla_cache_'))
  return _TEMPORARY[0].name


def pytest_configure(config):
  cache_dir = _xla_cache_dir(config)
  jax.config.update('jax_compilation_cache_dir', str(cache_dir))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(name='xla_cache_dir', scope='session')
def fixture_xla_cache_dir(pytestconfig):
  """The session's XLA cache folder (a str), for children to share:
  pytest's cache folder, or a temporary one under `-p no:cacheprovider`."""
  return _xla_cache_dir(pytestconfig)


@pytest.fixture(name='in_repo')
def fixture_in_repo(monkeypatch, xla_cache_dir):
  """Configs are given relative to the repo root; children see the repo."""
  monkeypatch.chdir(gin_helpers.REPO)
  monkeypatch.setenv('PYTHONPATH', gin_helpers.REPO)
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', xla_cache_dir)
