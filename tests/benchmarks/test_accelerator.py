"""benchmarks/accelerator.sh: every command line of every mode is accepted
(each benchmark's argparse and checks, the dry run's test selection), and
the image-only dry run runs on the CPU without trax, gin or TensorFlow, so
the GPU script cannot rot unseen. (What the full dry run's steps compute,
the benchmark tests compute at their own small sizes.)"""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

import gin_helpers
from benchmarks import harness

# Put first in PATH's stead as $PYTHON: records each command line (a JSON
# line) instead of running it; with PASS_PYTEST set, `-m pytest` runs for
# real, collecting only (the selection must be non-empty: exit 5 otherwise).
RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ['RECORD'], 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
if os.environ.get('PASS_PYTEST') and sys.argv[1:3] == ['-m', 'pytest']:
  os.execv(sys.executable, [sys.executable] + sys.argv[1:] + ['--collect-only'])
"""


class _Parsed(Exception):
  """Raised where a benchmark's main starts measuring: its argv passed."""


def _recorded(tmp_path, mode, pass_pytest=False):
  """accelerator.sh's steps and command lines in `mode`, nothing run."""
  recorder = tmp_path / 'python'
  recorder.write_text(RECORDER)
  recorder.chmod(0o755)
  record = tmp_path / f'{"_".join(mode)}.jsonl'
  env = dict(os.environ, PYTHON=str(recorder), RECORD=str(record),
             PYTHONPATH=gin_helpers.REPO)
  env.pop('PASS_PYTEST', None)
  if pass_pytest:
    env['PASS_PYTEST'] = '1'
  done = subprocess.run(
      ['bash', 'benchmarks/accelerator.sh', *mode, '--out',
       str(tmp_path / 'out')], cwd=gin_helpers.REPO, env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  with open(record) as f:
    return done.stdout, [json.loads(line) for line in f]


def _parse(monkeypatch, argv):
  """The namespace a benchmark's main parses from argv (['-m', module,
  ...]), after its own checks of it; stops before any measurement."""
  module = importlib.import_module(argv[1])
  parsed = []
  parse_args = argparse.ArgumentParser.parse_args

  def stop():
    raise _Parsed()

  with monkeypatch.context() as patch:
    patch.setattr(argparse.ArgumentParser, 'parse_args',
                  lambda self, *a, **k: parsed.append(
                      parse_args(self, *a, **k)) or parsed[-1])
    patch.setattr(harness, 'machine_info', stop)
    try:
      with pytest.raises(_Parsed):
        module.main(argv[2:])
    except SystemExit as e:  # argparse's usage error or a check after it
      pytest.fail(f'{" ".join(argv)}: exit {e.code}')
  return parsed[-1]


@pytest.mark.parametrize('mode', [
    pytest.param(('--no-install',), id='gpu'),
    # A fresh interpreter (importing trax) collects the dry run's test.
    pytest.param(('--dry-run',), id='dry_run', marks=pytest.mark.slow),
    pytest.param(('--image-only', '--no-install'), id='image_only_gpu')])
def test_every_step_command_line_is_accepted(mode, tmp_path, monkeypatch):
  dry = '--dry-run' in mode
  stdout, calls = _recorded(tmp_path, mode, pass_pytest=dry)
  image = '--image-only' in mode
  steps = (['tests: the ops, without trax', 'peer benchmark',
            'guards benchmark', 'relative-positions benchmark'] if image else
           ['tests: ops and the layer', 'attention benchmark',
            'peer benchmark', 'model benchmark'])
  # One device here (the recorder answers no device count): skipped.
  steps.append('sequence-parallel benchmark: skipped (one device)')
  for step in steps + ['done']:
    assert f'] {step}' in stdout, (step, stdout)
  assert ('check: JAX sees a GPU' in stdout) != dry
  benchmarks = {}
  for argv in calls:
    if argv[:2] == ['-m', 'pytest']:
      paths = [a for a in argv[2:] if a.startswith('tests')]
      assert paths and all(os.path.exists(os.path.join(
          gin_helpers.REPO, p)) for p in paths), argv
    elif argv[:1] == ['-m']:
      benchmarks[argv[1]] = _parse(monkeypatch, argv)
  image_steps = ['benchmarks.peers', 'benchmarks.guards', 'benchmarks.rpe']
  assert sorted(benchmarks) == sorted(image_steps if image else [
      'benchmarks.attention', 'benchmarks.peers', 'benchmarks.model'])
  for args in benchmarks.values():
    assert args.out.startswith(str(tmp_path / 'out'))
  if dry:  # the test step selected its one test (collected in the recorder)
    assert re.search(r'\n1/\d+ tests collected', stdout), stdout[-3000:]
    model = benchmarks['benchmarks.model']
    # One ImageNet64 Performer step at 768 tokens, nothing else trained.
    assert (model.models, model.pg19_length, model.depths) == (
        'performer', 0, '')
    assert 'SEQUENCE_LENGTH=768' in model.imagenet64_bindings
  if not image and not dry:  # the GPU run: every model, decoding at 8K
    model = benchmarks['benchmarks.model']
    assert model.models == 'performer,identity,reformer'
    assert harness.comma_list(model.prefixes, int) == [128, 8192]


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
# TensorFlow by a finder, not a None in sys.modules: einops (under
# performer-pytorch) takes a tensorflow listed there for one imported.
BLOCKER = """
import sys
for name in ('trax', 'gin', 'tensorflow_datasets'):
  sys.modules[name] = None  # import raises ModuleNotFoundError, as absent

class Absent:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'tensorflow':
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return None

sys.meta_path.insert(0, Absent())
"""


@pytest.mark.slow
def test_image_only_dry_run_needs_no_trax_gin_or_tensorflow(tmp_path, in_repo):
  del in_repo
  shim = tmp_path / 'shim'
  shim.mkdir()
  (shim / 'sitecustomize.py').write_text(BLOCKER)
  env = dict(os.environ, PYTHONPATH=f'{shim}:{gin_helpers.REPO}')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  for name in ('trax', 'gin', 'tensorflow'):  # the shim works, gin/ too
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
               'guards benchmark', 'relative-positions benchmark', 'done'):
    assert f'] {step}' in done.stdout
  assert ' passed' in done.stdout and 'failed' not in done.stdout
  with open(out / 'peers.json') as f:
    record = json.load(f)
  assert record['machine']['git_sha']
  peers = record['lengths']['128']
  # Every trax-free contender ran, against ours in the same rounds.
  assert {'ours_bidir', 'authors_bidir', 'exact_bidir', 'dpa_bidir',
          'ours_causal', 'exact_causal'} <= set(peers['seconds'])
  assert peers['time_over_ours']['ours_bidir'] == 1.0
  assert peers['time_over_ours']['authors_bidir'] == harness.paired_ratio(
      peers['rounds']['authors_bidir'], peers['rounds']['ours_bidir'])
  for name in ('ours_bidir', 'authors_bidir'):  # XLA's plan (no children)
    assert peers['memory'][name]['peak_bytes'] > 0
  assert (out / 'peers.png').exists()
  with open(out / 'rpe.json') as f:
    assert json.load(f)['rpe_over_favor']['256']['causal_time'] > 0
  with open(out / 'guards.json') as f:  # no trax: no trax variants
    guards = json.load(f)['results']['128']
  assert set(guards['softmax_bidir']) == {'full', 'no_query_guard', 'bare',
                                          'authors', 'factored_keys'}
  assert set(guards['bidir']) == {'full', 'no_query_guard', 'bare'}
  assert guards['causal']['full']['time_over_full'] == 1.0
