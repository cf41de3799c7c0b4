"""The layer-depth ladder: Performer vs its Reformer twin at 6, 12, 24 layers.

Each rung is one gin config (`gin/<family>/{performer,reformer}_<n>l.gin`)
trained by `python -m trax_favor.train` in its own process (so its peak
memory is its own), on the same data and seed, with the preset's bindings
on top. Rungs train into `<work_dir>/<rung>`; a rung whose checkpoint has
reached the preset's steps is done and skipped, and an unfinished one
resumes from its last checkpoint, so rerunning an interrupted ladder
continues it.

What is written (`<out>.json`, `<out>.md`, `<out>.png`): per rung the eval
loss and bits/dim at every eval step, the training seconds at those steps,
steps/s, peak memory, parameter count; a summary table; and the question
the Performer paper answers for ImageNet64: does an n-layer Performer match
a 2n-layer Reformer?


    python -m experiments.ladder --preset cpu    # about 30 min, 2 CPU cores
    python -m experiments.ladder --preset full \
        --config="trax_favor.imagenet64_inputs.data_dir='/data/tfds'"

Rerun the same command after an interruption: finished rungs are skipped,
an unfinished one resumes from its checkpoint. Writes <out>.json, .md, .png.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from trax_favor import model_files
from trax_favor.run import checkpoints
from trax_favor.run import configs
from trax_favor.run import training as trax_favor_training
from benchmarks import harness

ATTENTIONS = ('performer', 'reformer')
# A Performer "matches" a Reformer when its final eval bits/dim is at most
# this much higher (bits/dim; the spread between seeds of the CPU preset is
# of this order).
MATCH_TOLERANCE = 0.02

_LOCAL_TEXT = [  # the offline corpus in place of PG-19 (no download)
    'train.inputs=@trax_favor.local_text_inputs',
    'trax_favor.local_text_inputs.batch_size=%BATCH_SIZE',
    'trax_favor.local_text_inputs.sequence_length=%SEQUENCE_LENGTH',
    'trax_favor.local_text_inputs.seed=0',
]

# Presets: the same ratios between configs (only depth and attention differ
# inside a ladder); `cpu` shrinks widths and lengths to finish in about 30
# minutes on 2 CPU cores.
PRESETS = {
    'full': dict(family='imagenet64', depths=(6, 12, 24), bindings=[]),
    'full_pg19': dict(family='pg19', depths=(6, 12, 24), bindings=[]),
    'cpu': dict(family='pg19', depths=(6, 12, 24), bindings=_LOCAL_TEXT + [
        'D_MODEL=32', 'D_FF=64', 'N_HEADS=2', 'D_HEAD=16',
        'SEQUENCE_LENGTH=256', 'FF_CHUNK_SIZE=0', 'DROPOUT=0.0',
        'BATCH_SIZE=8', 'STEPS=300', 'EVAL_FREQUENCY=50', 'EVAL_STEPS=8',
        'WARMUP_STEPS=30', 'N_RANDOM_FEATURES=32', 'LSH_CHUNK_LEN=32',
        'LSH_N_BUCKETS=16',  # 2 * 256 / 32, as base.gin's ratio
        'multifactor.constant=0.005', 'multifactor.factors='
        "'constant * linear_warmup * cosine_decay'",
        'multifactor.steps_per_cycle=%STEPS']),
    # For tests: the 6-layer rungs cut to 1 layer.
    'smoke': dict(family='pg19', depths=(6,), n_layers={6: 1},
                  bindings=_LOCAL_TEXT + [
        'D_MODEL=16', 'D_FF=32', 'N_HEADS=2', 'D_HEAD=8',
        'SEQUENCE_LENGTH=64', 'FF_CHUNK_SIZE=0', 'DROPOUT=0.0',
        'BATCH_SIZE=2', 'STEPS=4', 'EVAL_FREQUENCY=2', 'EVAL_STEPS=1',
        'WARMUP_STEPS=1', 'N_RANDOM_FEATURES=8', 'LSH_CHUNK_LEN=16',
        'LSH_N_BUCKETS=8']),
}


def rungs(preset):
  """[(name, config file, attention, depth)] in the order they run."""
  spec = PRESETS[preset]
  return [(f'{spec["family"]}_{attention}_{depth}l',
           harness.repo_path(f'gin/{spec["family"]}/{attention}_{depth}l.gin'),
           attention, depth)
          for depth in spec['depths'] for attention in ATTENTIONS]


def _schedule(bindings, config_file):
  """(train.steps, train.eval_frequency) of the config with the bindings."""
  configs.parse_config([config_file], bindings)
  return (configs.configured_value('train.steps'),
          configs.configured_value('train.eval_frequency'))


def train_cli(config_files, bindings, rung_dir, name, log_every=10):
  """Runs the training CLI for one run, echoing its progress lines."""
  command = ([sys.executable, '-u', '-m', 'trax_favor.train',
              *[f'--config_file={c}' for c in config_files],
              f'--output_dir={rung_dir}', f'--log_every={log_every}'] +
             [f'--config={b}' for b in bindings])
  process = subprocess.Popen(command, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  tail = []
  for line in process.stdout:
    tail = (tail + [line])[-40:]
    if line.startswith(('step ', 'resuming', 'done', 'Step ')):
      print(f'[{name}] {line.rstrip()}', flush=True)
  if process.wait():
    raise RuntimeError(f'rung {name} failed (exit {process.returncode}):\n'
                       + ''.join(tail))


def collect(rung_dir):
  """Eval curves, timing and memory of a trained rung."""
  path = checkpoints.latest(rung_dir)
  checkpoint = model_files.read_pickle(path)  # runs no code from it
  history = trax_favor_training.read_eval_history(rung_dir)
  progress = {r['step']: r for r in trax_favor_training.read_progress(rung_dir)}

  def curve(metric):
    return [(int(step), float(value)) for step, value in history[metric]]

  seconds = [progress[s]['seconds'] if s in progress else None
             for s, _ in curve('loss')]
  rates = [r['steps_per_s'] for r in progress.values() if r['steps_per_s']]
  weights = model_files.read_arrays(  # beside the pickle, as in trax
      path.replace('.pkl.gz', '.weights.npy.gz'))
  n_params = sum(int(np.size(w)) for w in weights)
  return {
      'step': int(checkpoint['step']), 'n_params': n_params,
      'eval_loss': curve('loss'), 'eval_bits_per_dim': curve('bits_per_dim'),
      'train_seconds_at_eval': seconds,
      'steps_per_s': float(np.median(rates)) if rates else None,
      'peak_memory_bytes': max(
          (r['peak_memory_bytes'] for r in progress.values()), default=None),
  }


def run_ladder(preset, work_dir, out, extra_bindings=(), stop_after=None):
  """Trains (or resumes) every rung of the preset, then writes the report.

  Args:
    preset: a key of PRESETS.
    work_dir: rungs train into work_dir/<rung name>.
    out: path prefix of the report (.json, .md, .png).
    extra_bindings: gin bindings applied after the preset's.
    stop_after: train at most this many rungs in this call (None: all).

  Returns:
    The report record.
  """
  if preset not in PRESETS:
    raise ValueError(f'preset must be one of {sorted(PRESETS)}, '
                     f'got {preset!r}.')
  bindings = PRESETS[preset]['bindings'] + list(extra_bindings)
  record = {'machine': harness.machine_info(), 'preset': preset,
            'bindings': bindings, 'work_dir': work_dir, 'rungs': {}}
  trained = 0
  for name, config_file, attention, depth in rungs(preset):
    rung_dir = os.path.join(work_dir, name)
    rung_bindings = bindings + [
        f'N_LAYERS={n}' for n in [PRESETS[preset].get('n_layers', {}).get(
            depth)] if n]
    steps, eval_frequency = _schedule(rung_bindings, config_file)
    done = checkpoints.steps(rung_dir)
    if done and done[0][0] >= steps:
      print(f'[{name}] done earlier (step {done[0][0]}), skipping',
            flush=True)
    elif stop_after is not None and trained >= stop_after:
      continue
    else:
      start = time.time()
      train_cli([config_file], rung_bindings, rung_dir, name,
                log_every=eval_frequency)
      trained += 1
      print(f'[{name}] trained in {time.time() - start:.0f}s', flush=True)
    record['rungs'][name] = dict(collect(rung_dir), config=config_file,
                                 attention=attention, depth=depth)
    harness.save_json(record, out + '.json')
  record['comparisons'] = compare(record['rungs'])
  harness.save_json(record, out + '.json')
  with open(out + '.md', 'w') as f:
    f.write(markdown(record))
  plot(record, out + '.png')
  print(f'wrote {out}.json, {out}.md, {out}.png', flush=True)
  return record


def _final(rung):
  return rung['eval_bits_per_dim'][-1][1]


def compare(rungs_by_name):
  """Performer at n layers vs Reformer at 2n, wherever both rungs exist."""
  by_key = {(r['attention'], r['depth']): r for r in rungs_by_name.values()}
  found = []
  for (attention, depth), performer in sorted(by_key.items()):
    reformer = by_key.get(('reformer', 2 * depth))
    if attention != 'performer' or reformer is None:
      continue
    gap = _final(performer) - _final(reformer)
    found.append({
        'performer_layers': depth, 'reformer_layers': 2 * depth,
        'performer_bits_per_dim': _final(performer),
        'reformer_bits_per_dim': _final(reformer),
        'gap_bits_per_dim': gap, 'matches': bool(gap <= MATCH_TOLERANCE),
    })
  return found


def markdown(record):
  """The summary table and the depth comparisons, in Markdown."""
  rows = []
  for name, rung in record['rungs'].items():
    rows.append([name, rung['n_params'], rung['step'],
                 rung['eval_loss'][-1][1], _final(rung), rung['steps_per_s'],
                 rung['train_seconds_at_eval'][-1],
                 (rung['peak_memory_bytes'] or 0) / 2**20])
  text = harness.markdown_table(
      ['rung', 'params', 'steps', 'eval loss', 'bits/dim', 'steps/s',
       'train s', 'peak MiB'], rows)
  comparisons = [[f'Performer {c["performer_layers"]}L vs Reformer '
                  f'{c["reformer_layers"]}L', c['performer_bits_per_dim'],
                  c['reformer_bits_per_dim'], c['gap_bits_per_dim'],
                  'yes' if c['matches'] else 'no']
                 for c in record.get('comparisons', [])]
  if comparisons:
    text += '\n' + harness.markdown_table(
        ['comparison', 'Performer bits/dim', 'Reformer bits/dim', 'gap',
         f'matches (gap <= {MATCH_TOLERANCE})'], comparisons)
  return text


def plot(record, path):
  """Eval bits/dim against steps and against training seconds."""
  fig, (ax_steps, ax_time) = harness.subplots(1, 2, figsize=(11, 4))
  for name, rung in record['rungs'].items():
    style = '-' if rung['attention'] == 'performer' else '--'
    steps, bpd = zip(*rung['eval_bits_per_dim'])
    ax_steps.plot(steps, bpd, style, marker='o', ms=3, label=name)
    seconds = rung['train_seconds_at_eval']
    points = [(s, b) for s, b in zip(seconds, bpd) if s is not None]
    if points:
      ax_time.plot(*zip(*points), style, marker='o', ms=3, label=name)
  ax_steps.set(xlabel='step', ylabel='eval bits/dim', title='against steps')
  ax_time.set(xlabel='training seconds', ylabel='eval bits/dim',
              title='against wall-clock')
  ax_steps.legend(fontsize=7)
  fig.suptitle(f"depth ladder, preset {record['preset']} "
               f"({record['machine']['platform']})", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='cpu', choices=sorted(PRESETS))
  parser.add_argument('--out', default=None,
                      help='report prefix (default results/ladder_<preset>)')
  parser.add_argument('--work_dir', default=None,
                      help='rung checkpoints (default runs/ladder_<preset>)')
  parser.add_argument('--config', action='append', default=[],
                      help='extra gin binding for every rung (repeatable)')
  parser.add_argument('--stop_after', type=int, default=None,
                      help='train at most this many rungs, then report')
  args = parser.parse_args(argv)
  run_ladder(args.preset, args.work_dir or f'runs/ladder_{args.preset}',
             args.out or f'results/ladder_{args.preset}', args.config,
             args.stop_after)


if __name__ == '__main__':
  sys.exit(main())
