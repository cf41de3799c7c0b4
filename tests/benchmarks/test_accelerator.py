"""benchmarks/accelerator.sh, dry run on the CPU: every step runs with
shrunk sizes and writes its JSON, so the GPU script cannot rot unseen."""

import json
import os
import subprocess
import sys

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
      'accelerator.sh: unknown option --fast (--dry-run, --image-only, '
      '--no-install, --out DIR)']
  del tmp_path


# Put on PYTHONPATH, it makes the packages a bare accelerator image lacks
# unimportable (the gin/ config folder would otherwise import as `gin`).
BLOCKER = """
import sys
for name in ('trax', 'gin', 'tensorflow', 'tensorflow_datasets'):
  sys.modules[name] = None  # import raises ModuleNotFoundError, as absent
"""


@pytest.mark.slow
def test_image_only_dry_run_needs_no_trax_gin_or_tensorflow(tmp_path, in_repo):
  del in_repo
  shim = tmp_path / 'shim'
  shim.mkdir()
  (shim / 'sitecustomize.py').write_text(BLOCKER)
  env = dict(os.environ, PYTHONPATH=f'{shim}:{gin_helpers.REPO}')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  for name in ('trax', 'gin'):  # the shim works, the gin/ folder included
    refused = subprocess.run([sys.executable, '-c', f'import {name}'],
                             env=env, capture_output=True, text=True,
                             check=False)
    assert 'ModuleNotFoundError' in refused.stderr, name
  out = tmp_path / 'image'
  done = subprocess.run(
      ['bash', 'benchmarks/accelerator.sh', '--image-only', '--dry-run',
       '--out', str(out)], cwd=gin_helpers.REPO, env=env, capture_output=True,
      text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  for step in ('tests: the ops, without trax', 'peer benchmark',
               'relative-positions benchmark', 'done'):
    assert f'] {step}' in done.stdout
  assert ' passed' in done.stdout and 'failed' not in done.stdout
  with open(out / 'peers.json') as f:
    peers = json.load(f)['lengths']['128']
  # Every trax-free contender ran, against ours in the same rounds.
  assert {'ours_bidir', 'authors_bidir', 'exact_bidir', 'dpa_bidir',
          'ours_causal', 'exact_causal'} <= set(peers['seconds'])
  assert peers['time_over_ours']['ours_bidir'] == 1.0
  with open(out / 'rpe.json') as f:
    assert json.load(f)['rpe_over_favor']['256']['causal_time'] > 0
