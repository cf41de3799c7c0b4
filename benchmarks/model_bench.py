"""Model-level speed and memory: a full reversible training step, and decoding.

Training step: the models come from the gin configs (the family's
`performer_6l.gin`, with the attention part swapped for the baselines):

  performer  FAVOR+ (attention/favor.gin)
  identity   the same layer with o = v (benchmarks/identity.gin): the lower
             bound, the Performer paper's "X" line
  reformer   the LSH twin (reformer_6l.gin)
  exact      tl.SelfAttention over the whole sequence (attention/exact.gin),
             only where it fits (--exact_max_len)

One step is Trax's memory-efficient reversible trainer
(`ReversibleSerialTrainer.one_step`: forward, then backward block by block,
recomputing activations from the reversible outputs, then Adam), the step a
Loop with `use_memory_efficient_trainer=True` takes. Each measurement runs
in its own process: its time is the median step after a compiled warm-up,
its memory the peak during the timed steps (device peak on accelerators;
on CPU the resident set's high-water mark, restarted after the warm-up so
that XLA compilation does not count) minus what the process held before
building the model: weights, optimizer slots, activations, temporaries.
`measure_steps_interleaved` also times several models in one process, one
step of each in turn, for time ratios that drift less on a shared host.

Decoding: seconds per generated token after a prefix of 128 and of 8192
tokens, the PerformerLM (O(1) FAVOR state) against trax's TransformerLM in
predict mode (a key/value cache as long as the sequence), all four decoders
in one process, generating one token each in turn.
"""

import functools
import json
import subprocess
import sys
import time

import gin
import jax
import numpy as np
from trax import layers as tl
from trax import models as trax_models
from trax import optimizers
from trax import shapes
from trax.optimizers import trainer as trax_trainer

from benchmarks import harness
from trax_favor import compat
from trax_favor import decoding
from trax_favor.models import performer
from trax_favor.ops import cpu_speedups
from trax_favor.run import configs

MODELS = {  # name -> (config files, after the family's <attention>_6l.gin)
    'performer': ('performer', []),
    'identity': ('performer', ['benchmarks/identity.gin']),
    'reformer': ('reformer', []),
    'exact': ('performer', ['gin/attention/exact.gin']),
}


def _reversible_trainer(family, model, bindings, batch):
  """Trax's ReversibleSerialTrainer for one config'd model, with a batch."""
  attention, extra_files = MODELS[model]
  files = [harness.repo_path(f) for f in
           [f'gin/{family}/{attention}_6l.gin'] + extra_files]
  configs.parse_config(files, bindings)
  length = configs.configured_value('trax_favor.PerformerLM.max_len')
  n_layers = configs.configured_value('trax_favor.PerformerLM.n_layers')
  lm = configs.configured_model_fn()(mode='train')
  tokens = np.random.default_rng(0).integers(0, 256, (batch, length),
                                             dtype=np.int32)
  data = (tokens, tokens, np.ones(tokens.shape, np.float32))  # (b, l) each
  blocks, loss_layer = trax_trainer.extract_reversible_blocks(
      [lm, tl.WeightedCategoryCrossEntropy()])
  trax_trainer.init_reversible_blocks(blocks, loss_layer,
                                      shapes.signature(data),
                                      jax.random.PRNGKey(0))
  n_params = sum(int(np.size(w)) for w in jax.tree_util.tree_leaves(
      [lm.weights]))
  trainer = trax_trainer.ReversibleSerialTrainer(blocks, loss_layer,
                                                 optimizers.Adam)
  info = {'model': model, 'length': int(length), 'n_layers': int(n_layers),
          'batch': batch, 'n_params': n_params}
  return trainer, data, info


def _timed_step(trainer, data, i):
  start = time.perf_counter()
  loss, _ = trainer.one_step(data, jax.random.PRNGKey(i))
  jax.block_until_ready(loss)
  return time.perf_counter() - start, float(loss)


def measure_step(family, model, bindings, steps, batch):
  """Times the reversible trainer's step for one model; runs in-process.

  model_peak_bytes (peak during the timed steps less the memory in use
  before the model was built: the resident set on CPU, the device's
  allocation on an accelerator) means what it says only in a fresh process,
  as measure_step_in_child runs it: in a long-lived one, memory freed by
  earlier work can leave the peak below that starting point. On an
  accelerator the device peak also covers the warm-up steps (the same step).
  """
  before = harness.memory_in_use_bytes()
  trainer, data, info = _reversible_trainer(family, model, bindings, batch)
  times = []
  for i in range(steps + 2):  # two warm-up steps compile everything
    if i == 2:
      harness.reset_peak_memory()
    seconds, loss = _timed_step(trainer, data, i)
    times.append(seconds)
  peak = harness.peak_memory_bytes()
  return dict(info, seconds=float(np.median(times[2:])),
              steps_per_s=float(1.0 / np.median(times[2:])),
              peak_bytes=int(peak), model_peak_bytes=int(peak - before),
              loss=loss)


def measure_steps_interleaved(family, models, bindings, steps, batch):
  """Step times of several models in one process, their steps alternating.

  On a shared host whose speed drifts between runs, the ratio of two
  models' medians from alternating steps is steadier than one from separate
  runs. No memory figure (the models share the process).
  """
  built = {model: _reversible_trainer(family, model, bindings, batch)
           for model in models}
  step_fns = {model: functools.partial(_timed_step, trainer, data)
              for model, (trainer, data, _) in built.items()}
  harness.time_interleaved(step_fns, 2)  # warm-up rounds compile everything
  times = harness.time_interleaved(step_fns, steps)
  return {model: dict(built[model][2], seconds=float(np.median(ts)),
                      step_seconds=ts)
          for model, ts in times.items()}


def measure_step_in_child(family, model, bindings, steps, batch):
  """measure_step in a fresh process, so that its peak memory is its own.

  model: a name in MODELS, or a list of them: measure_steps_interleaved.
  """
  args = json.dumps([family, model, list(bindings), steps, batch])
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.model_bench', args],
      capture_output=True, text=True, check=False, cwd=harness.REPO)
  lines = [l for l in result.stdout.splitlines() if l.startswith('{')]
  if result.returncode or not lines:
    # The exception's own line: the last one not indented (gin adds an
    # indented "In call to configurable ..." after it).
    output = (result.stderr or result.stdout).strip().splitlines()
    return {'model': model, 'failed': [l for l in output
                                       if not l[:1].isspace()][-1:]
                                      or output[-1:]}
  return json.loads(lines[-1])


def measure_step_repeated(family, model, bindings, steps, batch, repeats=1):
  """measure_step_in_child `repeats` times, one fresh process each.

  A process's resident-set peak varies from run to run (the Performer at
  the configs' widths on CPU: 1688 to 1953 MiB in four processes), so
  with repeats > 1 the result holds the medians over runs of `seconds`,
  `peak_bytes` and `model_peak_bytes`, and each run's in `runs`. A failed
  run's result is returned as it is.
  """
  found = []
  for _ in range(repeats):
    result = measure_step_in_child(family, model, bindings, steps, batch)
    if 'failed' in result:
      return result
    found.append(result)
  if repeats == 1:
    return found[0]
  fields = ('seconds', 'peak_bytes', 'model_peak_bytes')
  medians = {f: float(np.median([r[f] for r in found])) for f in fields}
  return dict(found[0], **medians, steps_per_s=1.0 / medians['seconds'],
              runs=[{f: r[f] for f in fields} for r in found])


def _lm_decoder(kind, length, width):
  """A predict-mode LM of `kind` ('performer' or 'transformer'), batch 1.

  width: (d_model, d_ff, n_heads, n_layers); the Performer uses
  FavorSelfAttention's defaults (FAVOR+, m=256).
  """
  d_model, d_ff, n_heads, n_layers = width
  if kind == 'performer':
    return performer.PerformerLM(
        256, d_model=d_model, d_ff=d_ff, d_qk=d_model // n_heads,
        d_v=d_model // n_heads, n_layers=n_layers, n_heads=n_heads,
        dropout=0.0, max_len=length, mode='predict')
  # TransformerLM's CausalAttention keeps a key/value cache of
  # max_inference_length (2048 by default) whatever max_len is: size it to
  # the sequence, as a user decoding that far must.
  with gin.unlock_config():
    gin.bind_parameter('trax.layers.CausalAttention.max_inference_length',
                       length)
  try:
    return trax_models.TransformerLM(256, d_model=d_model, d_ff=d_ff,
                                     n_layers=n_layers, n_heads=n_heads,
                                     dropout=0.0, max_len=length,
                                     mode='predict')
  finally:
    gin.clear_config()


def measure_decoding(decoders, n_tokens, width):
  """Seconds per generated token of several decoders, their tokens alternating.

  decoders: (kind, prefix) pairs, kind 'performer' or 'transformer'. Each
  decoder is fed its prefix in one predict-mode call, then all generate
  n_tokens greedily in turn, one token each per round (after 2 warm-up
  rounds), so that a slow spell of a shared host hits every decoder alike.
  Returns {'kind/prefix': {kind, prefix, seconds_per_token (median),
  token_seconds (per round), state_bytes, prompt_seconds: {one_call,
  token_by_token}}}.
  """
  steps, found = {}, {}
  for kind, prefix in decoders:
    model = _lm_decoder(kind, prefix + n_tokens + 3, width)
    model.init(shapes.ShapeDtype((1, 1), np.int32),
               rng=jax.random.PRNGKey(0))
    prompt = np.random.default_rng(0).integers(1, 256, (1, prefix),
                                               dtype=np.int32)
    fill = cpu_speedups.jit(model.pure_fn)  # the prefix in one predict-mode call
    _, state = fill(prompt, model.weights, model.state, jax.random.PRNGKey(0))
    name = f'{kind}/{prefix}'
    found[name] = {'kind': kind, 'prefix': prefix, 'state_bytes': sum(
        int(np.size(s)) * np.dtype(s.dtype).itemsize
        for s in jax.tree_util.tree_leaves(state)),
                   'prompt_seconds': _prompt_seconds(model, fill, prompt)}
    steps[name] = functools.partial(
        _decode_token, decoding._step_fn(model),  # pylint: disable=protected-access
        model.weights, {'token': prompt[:, -1:], 'state': state})
  harness.time_interleaved(steps, 2)  # warm-up rounds compile the steps
  times = harness.time_interleaved(steps, n_tokens)
  for name, seconds in times.items():
    found[name].update(seconds_per_token=float(np.median(seconds)),
                       token_seconds=seconds)
  return found


def _prompt_seconds(model, fill, prompt):
  """Seconds to feed the prompt (1, p): in one predict-mode call (what
  `trax_favor.decoding.sample` does) and one token per call (what it did
  before), each compiled first."""
  rng = jax.random.PRNGKey(0)
  start = time.perf_counter()
  jax.block_until_ready(fill(prompt, model.weights, model.state, rng))
  one_call = time.perf_counter() - start
  token = cpu_speedups.jit(model.pure_fn)
  jax.block_until_ready(token(prompt[:, :1], model.weights, model.state, rng))
  state = model.state
  start = time.perf_counter()
  for t in range(prompt.shape[1]):
    _, state = token(prompt[:, t:t + 1], model.weights, state, rng)
  jax.block_until_ready(state)
  return {'one_call': one_call,
          'token_by_token': time.perf_counter() - start}


def _decode_token(step, weights, carry, i):
  """One greedy predict-mode token; carry holds the last token and state."""
  token, _, carry['state'] = step(carry['token'].reshape(1, 1), weights,
                                  carry['state'], jax.random.PRNGKey(i), 0.0)
  carry['token'] = jax.block_until_ready(token)


def _child_main(arg):
  family, model, bindings, steps, batch = json.loads(arg)
  measure = measure_steps_interleaved if isinstance(model, list) else (
      measure_step)
  with compat.trax_jit_options():  # trax's trainer jits, as our training
    result = measure(family, model, bindings, steps, batch)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  _child_main(sys.argv[1])


def _ratio(table, a, b, field, series=None):
  """table[a][field] / table[b][field], or None where either is missing.

  With `series` (a field of per-round seconds, taken in turn), the median
  over rounds of the ratio within a round where both records have it.
  """
  if series and all(series in table.get(x, {}) for x in (a, b)):
    return harness.paired_ratio(table[a][series], table[b][series])
  if a in table and b in table and field in table[a] and field in table[b]:
    return table[a][field] / table[b][field]
  return None


def ratios(record):
  """The ratios the README quotes, from whatever the record holds."""
  found = {}
  steps, depth, decoding = (record.get('steps', {}), record.get('depth', {}),
                            record.get('decoding', {}))
  interleaved = record.get('interleaved', {})
  for table, tag in ((steps, ''), (interleaved, ' (interleaved)')):
    for family in sorted({key.split('/')[0] for key in table}):
      p, i, r = (f'{family}/performer', f'{family}/identity',
                 f'{family}/reformer')
      found[f'{family}{tag}: performer / identity time'] = _ratio(
          table, p, i, 'seconds', 'step_seconds')
      found[f'{family}{tag}: performer / reformer time'] = _ratio(
          table, p, r, 'seconds', 'step_seconds')
      found[f'{family}{tag}: performer / reformer memory'] = _ratio(
          table, p, r, 'model_peak_bytes')
  depths = sorted({int(key.split('/')[1]) for key in depth})
  if len(depths) > 1:
    for model in ('performer', 'reformer'):
      found[f'depth {depths[-1]} / {depths[0]}: {model} memory'] = _ratio(
          depth, f'{model}/{depths[-1]}', f'{model}/{depths[0]}',
          'model_peak_bytes')
      found[f'depth {depths[-1]} / {depths[0]}: {model} time'] = _ratio(
          depth, f'{model}/{depths[-1]}', f'{model}/{depths[0]}', 'seconds')
  prefixes = sorted({int(key.split('/')[1]) for key in decoding})
  if len(prefixes) > 1:
    lo, hi = prefixes[0], prefixes[-1]
    for kind in ('performer', 'transformer'):
      found[f'decode {kind}: per-token time at prefix {hi} / {lo}'] = _ratio(
          decoding, f'{kind}/{hi}', f'{kind}/{lo}', 'seconds_per_token',
          'token_seconds')
    found[f'decode at prefix {hi}: transformer / performer time'] = _ratio(
        decoding, f'transformer/{hi}', f'performer/{hi}', 'seconds_per_token',
        'token_seconds')
  for name, result in sorted(decoding.items()):
    prompt = result.get('prompt_seconds')
    if prompt:
      found[f'prompt {name}: token by token / one call'] = (
          prompt['token_by_token'] / prompt['one_call'])
  return {k: v for k, v in found.items() if v is not None}


def plot(record, path):
  """Step time and memory per model; memory against depth; decoding time per
  token against prefix. Draws only the panels the record has data for
  (a run can skip the depth sweep or decoding); returns their titles."""
  steps, interleaved = ({k: v for k, v in record.get(table, {}).items()
                         if 'seconds' in v}  # failed ones left out
                        for table in ('steps', 'interleaved'))
  memory = {k: v['model_peak_bytes'] * 2**-20 for k, v in steps.items()
            if 'model_peak_bytes' in v}

  def series(table, names, field, scale):  # {name: [(x, field * scale)]}
    found = {name: sorted((int(k.split('/')[1]), v[field] * scale)
                          for k, v in record.get(table, {}).items()
                          if k.startswith(name + '/') and field in v)
             for name in names}
    return {name: points for name, points in found.items() if points}

  depth = series('depth', ('performer', 'reformer'), 'model_peak_bytes',
                 2**-20)
  decoding = series('decoding', ('performer', 'transformer'),
                    'seconds_per_token', 1e3)

  def draw_runs(ax, names, y, field, scale):
    """Each fresh process's value (measure_step_repeated) as a dot on its
    model's median bar."""
    points = [(v[field] * scale, y_n) for n, y_n in zip(names, y)
              for v in steps.get(n, {}).get('runs', [])]
    if points:
      ax.plot(*zip(*points), 'k.', label='each process')

  def draw_times(ax):
    names = sorted(set(steps) | set(interleaved))
    y = np.arange(len(names))
    tables = [(label, table) for label, table in (
        ('own process', steps), ('steps alternating', interleaved)) if table]
    height = 0.8 / len(tables)
    for i, (label, table) in enumerate(tables):  # bars side by side
      y_bars = y + height * (i - (len(tables) - 1) / 2)
      ax.barh(y_bars, [table.get(n, {}).get('seconds', 0.0) for n in names],
              height=height, label=label)
      if table is steps:
        draw_runs(ax, names, y_bars, 'seconds', 1.0)
    ax.set_yticks(y, names)
    ax.set(xlabel='seconds per reversible training step')
    ax.legend(fontsize=8, ncol=2, loc='upper center',
              bbox_to_anchor=(0.5, -0.2))  # below the axis, off the bars

  def draw_memory(ax):
    names = sorted(memory)
    ax.barh(names, [memory[n] for n in names])
    draw_runs(ax, names, range(len(names)), 'model_peak_bytes', 2**-20)
    ax.set(xlabel='step peak MiB over the process')

  def draw_depth(ax):
    for model, points in depth.items():
      ax.plot(*zip(*points), 'o-', label=model)
    ax.set(xlabel='layers', ylabel='step peak MiB over the process')
    ax.legend()

  def draw_decoding(ax):
    for kind, points in decoding.items():
      ax.semilogx(*zip(*points), 'o-', label=kind)
    ax.set(xlabel='prefix length', ylabel='ms per generated token')
    ax.legend()

  panels = [(title, draw) for title, draw, has_data in (
      ('training step', draw_times, steps or interleaved),
      ('step memory', draw_memory, memory),
      ('memory against depth', draw_depth, depth),
      ('decoding', draw_decoding, decoding)) if has_data]
  if not panels:
    return []
  fig, axes = harness.subplots(1, len(panels), figsize=(4.7 * len(panels), 4),
                           squeeze=False)
  for ax, (title, draw) in zip(axes[0], panels):
    draw(ax)
    ax.set_title(title)
  fig.suptitle(f"{record['machine']['platform']} "
               f"({record['machine']['cpu_count']} cpus)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return [title for title, _ in panels]
