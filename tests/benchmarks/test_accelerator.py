"""benchmarks/accelerator.sh, dry run on the CPU: every step runs with
shrunk sizes and writes its JSON, so the GPU script cannot rot unseen."""

import json
import os
import subprocess

import pytest

import gin_helpers


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_every_result(tmp_path, in_repo):
  del in_repo
  out = tmp_path / 'gpu'
  done = subprocess.run(
      ['bash', 'benchmarks/accelerator.sh', '--dry-run', '--out', str(out)],
      cwd=gin_helpers.REPO, capture_output=True, text=True, timeout=900,
      check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  for step in ('tests: ops and the layer', 'attention benchmark',
               'peer benchmark', 'model benchmark', 'done'):
    assert f'] {step}' in done.stdout
  assert '1 passed' in done.stdout
  records = {}
  for name in ('attention', 'peers', 'model'):
    assert (out / f'{name}.png').exists(), name
    with open(out / f'{name}.json') as f:
      records[name] = json.load(f)
    assert records[name]['machine']['git_sha']
  peers = records['peers']['lengths']['128']
  # Ratios are taken against ours in the same rounds.
  assert peers['time_over_ours']['ours_bidir'] == 1.0
  assert set(peers['seconds']) >= {'ours_bidir', 'ours_causal',
                                   'authors_bidir'}
  for name in ('ours_bidir', 'authors_bidir'):  # XLA's plan (no children)
    assert peers['memory'][name]['peak_bytes'] > 0
  assert set(records['model']['steps']) == {'imagenet64/performer'}
  assert records['model']['steps']['imagenet64/performer']['length'] == 768


def test_unknown_option_is_one_line(tmp_path):
  done = subprocess.run(
      ['bash', os.path.join(gin_helpers.REPO, 'benchmarks/accelerator.sh'),
       '--fast'], capture_output=True, text=True, timeout=30, check=False)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      'accelerator.sh: unknown option --fast (--dry-run, --no-install, '
      '--out DIR)']
  del tmp_path
