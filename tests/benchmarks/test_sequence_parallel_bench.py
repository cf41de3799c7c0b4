"""benchmarks/sequence_parallel.py end to end at a tiny size, in a fresh
interpreter (it forces host devices, which must happen before JAX starts
its backend)."""

import json
import os
import subprocess
import sys

import pytest

import gin_helpers

TIMEOUT = 240  # seconds; a hang fails the test


@pytest.mark.slow
def test_sequence_parallel_benchmark_writes_per_device_records(tmp_path):
  out = str(tmp_path / 'sp')
  command = [sys.executable, '-m', 'benchmarks.sequence_parallel',
             '--out', out, '--lengths', '256', '--devices', '1,2',
             '--host_devices', '2', '--n_heads', '1', '--d_head', '8',
             '--n_random_features', '8', '--block_size', '64',
             '--chunk_size', '16', '--repeats', '1']
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=gin_helpers.REPO)
  env.pop('XLA_FLAGS', None)
  process = subprocess.Popen(command, cwd=gin_helpers.REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  try:
    output, _ = process.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    pytest.fail(f'the benchmark ran over {TIMEOUT} s')
  assert process.returncode == 0, output[-3000:]
  with open(out + '.json') as f:
    record = json.load(f)
  assert len(record['machine']['devices']) == 2
  assert record['machine']['git_sha']
  runs = record['runs']['256']
  assert set(runs) == {'1', '2'}
  for run in runs.values():
    assert run['seconds'] > 0 and run['bytes_per_device'] > 0
  # Half the sequence per device: less memory per device.
  assert runs['2']['bytes_per_device'] < runs['1']['bytes_per_device']
