"""`import trax_favor` turns XLA's CPU YNNPACK fusions off, and only where it
may: before JAX starts, where the user has not chosen, on a jaxlib that
knows the flag."""

import os
import subprocess
import sys

import jax
import pytest
import trax_favor

import gin_helpers

# A product with elementwise work and a reduction after it: XLA's CPU backend
# hands such a pattern to one YNNPACK fusion unless the flag is set.
FUSED = """
import os
import trax_favor
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jnp.sum(jnp.exp(a @ b) * 2.0, axis=-1))
hlo = f.lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
print(repr(os.environ.get('XLA_FLAGS')), hlo.count('__ynn_fusion'))
"""


def _fresh_process(**env_extra):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(PYTHONPATH=gin_helpers.REPO, **env_extra)
  result = subprocess.run([sys.executable, '-c', FUSED], cwd=gin_helpers.REPO,
                          env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.split()


def test_import_turns_ynn_fusions_off_and_the_opt_out_keeps_them():
  flags, fusions = _fresh_process()
  assert (flags, fusions) == ("'--xla_cpu_experimental_ynn_fusion_type='",
                              '0')
  flags, fusions = _fresh_process(TRAX_FAVOR_XLA_CPU_DEFAULTS='0')
  assert flags == 'None' and int(fusions) >= 1  # XLA's default fuses it


def test_a_users_own_setting_is_kept(monkeypatch):
  mine = '--xla_force_host_platform_device_count=2 ' + (
      trax_favor.YNN_FLAG + '=individual_dot')
  monkeypatch.setenv('XLA_FLAGS', mine)
  assert not trax_favor.prefer_eigen_dots_on_cpu()
  assert os.environ['XLA_FLAGS'] == mine


def test_after_jax_started_it_warns_and_changes_nothing(monkeypatch):
  jax.numpy.ones(2).block_until_ready()  # JAX's CPU backend has started
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  with pytest.warns(UserWarning, match='import trax_favor before running JAX'):
    assert not trax_favor.prefer_eigen_dots_on_cpu()
  assert 'XLA_FLAGS' not in os.environ


def test_a_jaxlib_without_the_flag_is_left_alone(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.setattr(trax_favor.metadata, 'version', lambda name: '0.9.2')
  assert not trax_favor.prefer_eigen_dots_on_cpu()  # XLA would stop at it
  assert 'XLA_FLAGS' not in os.environ
