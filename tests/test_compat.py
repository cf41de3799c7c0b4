"""Each trax-on-current-JAX fix: its user path works, and fails when undone."""

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import trax
import trax_favor
from trax import layers as tl
from trax import shapes
from trax.supervised import trainer_lib
from trax.supervised import training

from trax_favor import compat
from trax_favor import model_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _needed(name):
  """Fixes are no-ops on JAX versions that still have the old API."""
  return compat.applied()[name]


def _toy_loop(output_dir, n_devices=1, batch=2):
  def batches():
    rng = np.random.default_rng(0)
    while True:
      seq = ((rng.integers(0, 8, (batch, 1)) + np.arange(12)) % 8).astype(
          np.int32)
      yield seq, seq, np.ones_like(seq, np.float32)
  model = trax.models.ReformerLM(
      vocab_size=8, d_model=8, d_ff=16, d_attention_key=4, d_attention_value=4,
      n_layers=1, n_heads=2, max_len=16, mode='train',
      attention_type=trax_favor.FavorSelfAttention)
  task = training.TrainTask(batches(), tl.WeightedCategoryCrossEntropy(),
                            trax.optimizers.Adam(0.01),
                            n_steps_per_checkpoint=1)
  return training.Loop(model, [task], output_dir=output_dir,
                       n_devices=n_devices)


@pytest.mark.slow
def test_loop_resumes_from_checkpoint(tmp_path):
  first = _toy_loop(str(tmp_path))
  first.run(1)  # one step: a second would compile the step again
  resumed = _toy_loop(str(tmp_path))  # restores model.pkl.gz on creation
  assert resumed.step == 1
  for a, b in zip(jax.tree.leaves(resumed.model.weights),
                  jax.tree.leaves(first.model.weights)):
    np.testing.assert_allclose(a, b)
  if _needed('tree_unflatten'):
    with compat.undone('tree_unflatten'), pytest.raises(TypeError):
      _toy_loop(str(tmp_path))


def _self_attention_decodes(layer_cls, **kwargs):
  """Trax's own attention: predict mode token by token == eval mode."""
  x = np.random.default_rng(1).standard_normal((1, 8, 8)).astype(np.float32)
  ev = layer_cls(n_heads=2, d_qk=4, d_v=4, causal=True, mode='eval', **kwargs)
  ev.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  pr = layer_cls(n_heads=2, d_qk=4, d_v=4, causal=True, mode='predict',
                 **kwargs)
  pr.init(shapes.signature(x[:, :1]), rng=jax.random.PRNGKey(0))
  step = jax.jit(pr.pure_fn)  # as decoding runs it (tl.Accelerate jits)
  state, rng, got = pr.state, jax.random.PRNGKey(1), []
  for t in range(8):
    out, state = step(x[:, t:t + 1], ev.weights, state, rng)
    got.append(out)
  np.testing.assert_allclose(np.concatenate(got, axis=1), ev(x), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize('fix', ['cond_per_branch_operands',
                                 'stop_gradient_of_python_scalars'])
def test_trax_self_attention_predict_mode(fix):
  kwargs = dict(predict_mem_len=8, predict_drop_len=8)
  _self_attention_decodes(tl.SelfAttention, **kwargs)
  if _needed(fix):
    with compat.undone(fix), pytest.raises(Exception):
      _self_attention_decodes(tl.SelfAttention, **kwargs)


def test_lsh_attention_predict_mode_runs():
  x = np.random.default_rng(2).standard_normal((1, 8, 8)).astype(np.float32)
  pr = tl.LSHSelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True,
                           mode='predict', chunk_len=4, n_buckets=2,
                           predict_mem_len=8, predict_drop_len=8)
  pr.init(shapes.signature(x[:, :1]), rng=jax.random.PRNGKey(0))
  step, state, rng, outs = jax.jit(pr.pure_fn), pr.state, pr.rng, []
  for t in range(8):
    out, state = step(x[:, t:t + 1], pr.weights, state, rng)
    outs.append(out)
  assert all(np.all(np.isfinite(o)) for o in outs)
  assert not np.allclose(outs[0], outs[-1])


def test_for_n_devices_replicates():
  replicated = tl.for_n_devices(np.arange(3.0), 2)  # one copy per device
  np.testing.assert_array_equal(
      replicated, np.tile(np.arange(3.0), (len(jax.local_devices()), 1)))
  if _needed('device_put_replicated'):
    with compat.undone('device_put_replicated'), pytest.raises(
        AttributeError):
      tl.for_n_devices(np.arange(3.0), 2)


def test_on_cpu_uses_this_process_device():
  from trax.layers import acceleration  # pylint: disable=g-import-not-at-top
  placed = tl.on_cpu(np.arange(3.0))
  assert placed.devices() == {jax.local_devices(backend='cpu')[0]}
  assert tl.on_cpu is acceleration.on_cpu
  if _needed('on_cpu_local_device'):
    with compat.undone('on_cpu_local_device'):
      assert "jax.devices('cpu')[0]" in inspect.getsource(tl.on_cpu)
      assert tl.on_cpu is acceleration.on_cpu
    assert "jax.devices('cpu')[0]" not in inspect.getsource(tl.on_cpu)


@pytest.mark.slow
def test_trainer_lib_saves_computation_graphs(tmp_path):
  inputs = trax.data.inputs.simple_sequence_copy_inputs(
      vocab_size=8, batch_size=2, train_length=16, eval_min_length=16,
      eval_max_length=16, pad_to_multiple=16)
  model = lambda mode: trax.models.ReformerLM(
      vocab_size=8, d_model=8, d_ff=16, d_attention_key=4, d_attention_value=4,
      n_layers=1, n_heads=2, max_len=16, mode=mode,
      attention_type=trax_favor.FavorSelfAttention)
  run = lambda out: trainer_lib.train(
      out, model=model, inputs=lambda: inputs, steps=1, eval_steps=1,
      eval_frequency=1, use_loop=False, save_graphs=True,
      optimizer=trax.optimizers.Adam)
  run(str(tmp_path / 'ok'))
  hlo = (tmp_path / 'ok' / 'forward.txt').read_text()
  assert 'HloModule' in hlo
  if _needed('xla_computation'):
    with compat.undone('xla_computation'), pytest.raises(AttributeError):
      run(str(tmp_path / 'undone'))


def _warnings_of(fn):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    fn()
  return [f'{w.category.__name__}: {w.message}' for w in caught]


def test_checkpoints_and_host_setup_warn_nothing(tmp_path):
  """trax's checkpoint writers open GzipFile without a mode, and its Loop
  set-up calls the deprecated jax.host_count: each warned at every call."""
  model = tl.Dense(3)
  model.init(shapes.ShapeDtype((1, 2)))

  def run():
    model.save_to_file(str(tmp_path / 'model.pkl.gz'),
                       input_signature=shapes.ShapeDtype((1, 2)))
    training.init_host_and_devices()

  assert _warnings_of(run) == []
  restored = tl.Dense(3)
  restored.init_from_file(str(tmp_path / 'model.pkl.gz'))
  np.testing.assert_array_equal(restored.weights[0], model.weights[0])
  if _needed('gzip_explicit_mode'):
    with compat.undone('gzip_explicit_mode'):
      assert any('GzipFile' in w for w in _warnings_of(run))
  if _needed('host_count_alias'):
    with compat.undone('host_count_alias'):
      assert any('process_count' in w for w in _warnings_of(run))


def _run(cmd, env_extra=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_stock_trax_trainer_cli_trains_a_favor_model(tmp_path):
  """`python -m trax_favor.trax_trainer`, trax's own CLI with its own flags,
  on a tiny PG-19 config whose includes resolve from the repo root, with
  the offline text swapped in for PG-19."""
  bindings = ['train.inputs=@trax_favor.local_text_inputs',
              'trax_favor.local_text_inputs.batch_size=2',
              'trax_favor.local_text_inputs.sequence_length=64',
              'SEQUENCE_LENGTH=64', 'N_LAYERS=1',
              'train.steps=1', 'train.eval_frequency=1']
  result = _run([sys.executable, '-m', 'trax_favor.trax_trainer',
                 '--config_file=gin/pg19/performer_tiny.gin',
                 f'--output_dir={tmp_path}']
                + [f'--config={b}' for b in bindings])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'trax_favor.FavorSelfAttention' in (tmp_path / 'config.gin').read_text()
  # The checkpoint holds the weights trax counted, and one step of Adam
  # from a uniform-ish start leaves the loss near log(256).
  logged = result.stdout + result.stderr
  n_weights = int(re.search(r'Total number of trainable weights: (\d+)',
                            logged).group(1))
  saved = model_files.read_arrays(str(tmp_path / 'model.weights.npy.gz'))
  assert sum(np.size(w) for w in saved) == n_weights
  loss = float(re.search(r'Step +1: train +loss \| +(\S+)', logged).group(1))
  assert abs(loss - np.log(256)) < 1.0, loss


def test_trax_trainer_module_imports_without_changing_jax_lib():
  """trax/trainer.py imports jax.lib.xla_extension (gone since jax 0.9):
  it fails as shipped, and compat offers the module only while it loads."""
  import jax.lib  # pylint: disable=g-import-not-at-top
  had_module = hasattr(jax.lib, 'xla_extension')
  if 'trax.trainer' not in sys.modules and not had_module:
    with pytest.raises(ImportError):
      importlib.import_module('trax.trainer')
  trainer = compat.import_trainer()
  assert callable(trainer.xc.get_distributed_runtime_client)
  assert hasattr(jax.lib, 'xla_extension') == had_module
  assert ('jax.lib.xla_extension' in sys.modules) == had_module


GLOBALS = """
import json, os, sys
fd2 = os.readlink('/proc/self/fd/2')
env, meta_path = dict(os.environ), list(sys.meta_path)
STEPS = {{}}

def snapshot(name):
  STEPS[name] = dict(
      imported=sorted(m for m in ('jax', 'trax', 'tensorflow', 'gym')
                      if m in sys.modules),
      env=sorted(k for k, v in os.environ.items() if env.get(k) != v),
      meta_path=sorted(type(f).__name__ for f in sys.meta_path
                       if f not in meta_path),
      fd2=os.readlink('/proc/self/fd/2') == fd2)

{imports}
import jax, jax.lib
from jax._src import xla_bridge
snapshot('end')
print(json.dumps(dict(
    STEPS, backend_started=xla_bridge.backends_are_initialized(),
    jax_names=sorted(dir(jax)), jax_lib_names=sorted(dir(jax.lib)))))
"""


def _globals_after(imports):
  result = _run([sys.executable, '-c', GLOBALS.format(imports=imports)])
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
def test_import_changes_nothing_global_and_starts_no_backend():
  """`import trax_favor` imports neither JAX nor trax, and
  `import trax_favor.ops` neither trax, TensorFlow nor gym; importing trax
  through trax_favor (its layer) changes what `import trax` alone changes
  (trax and TensorFlow set environment variables themselves) and nothing
  more: no backend started, no jax attribute, no redirected stderr. One
  interpreter takes the three steps in turn, a snapshot after each; one
  imports trax alone."""
  steps = _globals_after("import trax_favor\nsnapshot('trax_favor')\n"
                         "import trax_favor.ops\nsnapshot('ops')\n"
                         'trax_favor.FavorSelfAttention')
  plain = _globals_after('import trax')
  alone, ops, through = steps['trax_favor'], steps['ops'], steps['end']
  assert alone['imported'] == []
  assert alone['env'] == [] and alone['fd2']
  assert alone['meta_path'] == ['_TraxFinder']  # until trax is imported
  assert ops['imported'] == ['jax'] and ops['env'] == []
  assert not steps['backend_started'] and through['fd2']  # nor before
  for key in ('env', 'meta_path'):
    assert through[key] == plain['end'][key], key
  for key in ('jax_names', 'jax_lib_names'):
    assert steps[key] == plain[key], key

