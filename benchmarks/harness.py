"""The benchmark harness: what every experiment and benchmark writes (machine,
versions, git SHA; JSON saved after each measurement with `trax_favor.run.files`),
Markdown tables, figures, and timing helpers.

Each result file is rewritten whole after every measurement (to a temporary
name, then renamed), so an interrupted run keeps everything measured so far
and a rerun can skip it.
"""

import argparse
from importlib import metadata
import os
import platform
import subprocess
import time

import jax
import numpy as np

import trax_favor
from trax_favor.ops import cpu_speedups
from trax_favor.run import files
from trax_favor.run import memory

# The package's atomic JSON files and memory figures, under the names the
# benchmarks and experiments use.
save_json, load_json = files.save_json, files.load_json
memory_in_use_bytes = memory.memory_in_use_bytes
peak_memory_bytes = memory.peak_memory_bytes
reset_peak_memory = memory.reset_peak_memory


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo_path(relative):
  """A path inside the repository (configs are found from it, not from the
  working directory)."""
  return os.path.join(REPO, relative)


def git_sha():
  """HEAD of the checkout this package was installed in (its virtualenv
  inside the checkout, as the README sets up), else of the current
  directory's (an install elsewhere, run from the checkout); else 'unknown'."""
  for where in (os.path.dirname(os.path.abspath(__file__)), os.getcwd()):
    try:
      return subprocess.run(
          ['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
          check=True, cwd=where).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      continue
  return 'unknown'


def _installed_version(name):
  """The installed version of distribution `name`, or None (an image
  without trax, say)."""
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def machine_info():
  """Platform, CPU count, devices, XLA flags and the versions that shape the
  numbers."""
  return {
      'platform': platform.platform(), 'python': platform.python_version(),
      'cpu_count': os.cpu_count(), 'jax': jax.__version__,
      'jaxlib': _installed_version('jaxlib'), 'trax': _installed_version('trax'),
      'trax_favor': trax_favor.__version__,
      'devices': [str(d) for d in jax.devices()],
      'device_kind': jax.devices()[0].device_kind,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'cpu_speedups': cpu_speedups.enabled(),
      'compiler_options': cpu_speedups.compiler_options(), 'git_sha': git_sha(),
  }


def earlier_record(path, config, measured_with, same_code=False):
  """The record at path for a rerun to resume, or None to start over.

  It is resumed only where its config agrees with `config` (a dict) on every
  name in measured_with, the settings its numbers depend on, under the same
  XLA_FLAGS, and with same_code only if the same git commit wrote it;
  otherwise the rerun says so and starts over, rather than mixing
  measurements of other settings.
  """
  record = load_json(path)
  if record is None:
    return None
  differ = [k for k in measured_with
            if record.get('config', {}).get(k) != config.get(k)]
  if record.get('machine', {}).get('xla_flags', '') != os.environ.get(
      'XLA_FLAGS', ''):
    differ.append('XLA_FLAGS')
  if same_code and record.get('machine', {}).get('git_sha') != git_sha():
    differ.append('git commit')
  if differ:
    print(f'{path}: written with other {", ".join(differ)}; starting over',
          flush=True)
    return None
  return record


def comma_list(text, kind=str):
  """A command-line list: '6,12,24' -> [6, 12, 24] with kind=int; '' -> []."""
  return [kind(part) for part in text.split(',') if part]


def comma_list_arg(kind, choices=None):
  """An argparse `type` that checks an option is a comma_list of `kind`
  (each entry one of `choices`, when given).

  It returns the text unchanged (the JSON config keeps it as given), and a
  bad entry becomes argparse's usage error naming the option, e.g.
  "argument --lengths: invalid comma-separated int value: '4k'".
  """
  def check(text):
    unknown = [x for x in comma_list(text, kind)
               if choices is not None and x not in choices]
    if unknown:
      raise argparse.ArgumentTypeError(
          f'unknown {unknown}; choose from {", ".join(map(str, choices))}')
    return text
  check.__name__ = f'comma-separated {kind.__name__}'
  return check


def markdown_table(header, rows):
  """A GitHub Markdown table; floats get 4 significant digits."""
  def cell(value):
    if isinstance(value, float):
      return f'{value:.4g}'
    return '' if value is None else str(value)
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def compile_step(fn, *fn_args, options=None):
  """Compiles jit(fn) for fn_args and runs it once (the warm-up), with
  compiler `options` (default: trax_favor's, `cpu_speedups.compiler_options`;
  {} for XLA's defaults).

  Returns (run, peak): run() calls the compiled program on fn_args and waits
  for its result; peak is what XLA plans for arguments, outputs and
  temporaries of the program (None where the backend does not say): a
  device-independent memory figure, the same on every run.
  """
  if options is None:
    options = cpu_speedups.compiler_options()
  compiled = jax.jit(fn, compiler_options=options or None).lower(
      *fn_args).compile()

  def run():
    return jax.block_until_ready(compiled(*fn_args))

  run()
  stats = compiled.memory_analysis()
  peak = None if stats is None else int(
      stats.temp_size_in_bytes + stats.argument_size_in_bytes +
      stats.output_size_in_bytes)
  return run, peak


def time_interleaved(runs, rounds, settle=False):
  """Seconds of each call of `runs` ({name: run(i)}), the names in turn.

  Round i calls every run once, with i. On a shared host whose speed drifts
  (steal time), ratios of medians taken this way are steadier than ratios
  of separate timing runs. Each round starts one name further on (round i
  at name i mod n), so no run always follows the same other one: on this
  CPU one program ran up to 20% slower in the place right after another.
  With `settle`, every timed call comes right after an untimed call of the
  same run, so no timed call follows another program at all (caches hold
  its own data): a per-round ratio then carries no place-in-round bias,
  which the rotation alone leaves in the median whenever the rounds do not
  give each run each place equally often.
  Returns {name: [seconds per round]}.
  """
  times = {name: [] for name in runs}
  names = list(runs)
  for i in range(rounds):
    shift = i % len(names) if names else 0
    for name in names[shift:] + names[:shift]:
      run = runs[name]
      if settle:
        run(i)
      start = time.perf_counter()
      run(i)
      times[name].append(time.perf_counter() - start)
  return times


def paired_ratio(seconds_a, seconds_b):
  """Median over rounds of a's seconds over b's in the same round.

  For two lists from one `time_interleaved`: a slow spell of the host
  inflates both sides of a round's ratio alike.
  """
  return float(np.median(np.divide(seconds_a, seconds_b)))


def rate_against(runs, peaks, baseline, rounds, name):
  """Each of `runs` ({key: run()}, compiled) against runs[baseline]:
  settled alternating rounds (`time_interleaved`); per key the median
  seconds, f'time_over_{name}' (the paired median), f'memory_over_{name}'
  (the ratio of `peaks`, XLA's planned bytes; None where unknown) and
  'peak_bytes'."""
  seconds = time_interleaved({k: (lambda i, run=run: run())
                              for k, run in runs.items()}, rounds, settle=True)
  base = peaks[baseline]
  return {k: {'seconds': float(np.median(seconds[k])),
              f'time_over_{name}': paired_ratio(seconds[k],
                                                seconds[baseline]),
              f'memory_over_{name}': (peaks[k] / base if peaks[k] and base
                                      else None),
              'peak_bytes': peaks[k]} for k in runs}


def write_results(out, machine, args, results):
  """<out>.json: `machine` (`machine_info()`, taken before measuring), the
  arguments and `results`."""
  save_json({'machine': machine, 'config': vars(args), 'results': results},
            out + '.json')
  print(f'wrote {out}.json')


def subplots(*args, **kwargs):
  """(figure, axes) of a matplotlib Figure that pyplot does not manage.

  No backend is switched (a notebook's inline plots keep working) and
  nothing needs closing: save it with figure.savefig(path).
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=kwargs.pop('figsize', None))
  return figure, figure.subplots(*args, **kwargs)
