"""Train a gin-configured model: `python -m trax_favor.train` / `trax-favor-train`.

    python -m trax_favor.train --config_file=gin/offline_default.gin \
        --output_dir=runs/default

Flags:
  --config_file  gin file, repeatable (parsed in order)
  --config       gin binding, repeatable, e.g. --config='train.steps=100'
  --output_dir   checkpoints, configs, TensorBoard files; rerunning the same
                 command after an interruption continues from the last
                 checkpoint
  --n_devices    data-parallel devices (default: all local devices)
  --sequence_parallel N
                 split every sequence of training and eval over N local
                 devices (the model must take sequence_axis, as PerformerLM
                 does): a mesh (devices // N, N), the batch split over the
                 first axis, the length over the second; the sequence
                 length must divide by N and the batch by devices // N.
                 Checkpoints are the same with or without it (a run may
                 resume either way). One process only, for now.
  --log_every    progress line every this many steps
  --allow_config_change
                 resume although the config's data, optimizer or schedule
                 differ from the run's saved config.gin (a changed model is
                 refused regardless; train.steps and eval/checkpoint timing
                 may always change)
  --start_afresh where only damaged checkpoints are left: start at step 0,
                 what is left moved into <output_dir>/before_afresh/
  --verbose      on an error, the full traceback instead of one line

Several processes (one per device; see trax_favor/run/distributed.py), each
started with the same flags plus its id, on a shared --output_dir:
  --coordinator_address  HOST:PORT of process 0's coordinator
  --num_processes        how many processes
  --process_id           this process's id, 0 .. num_processes - 1
  --distributed_timeout  seconds for every process to join (default 120)
(or JAX's JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import argparse
import sys

from trax_favor.run import cli


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m trax_favor.train',
      description='Train a gin-configured trax_favor model.')
  cli.add_config_flags(parser, 'where checkpoints and logs go')
  parser.add_argument('--n_devices', type=int, default=None,
                      help='data-parallel devices (default: all)')
  parser.add_argument('--sequence_parallel', type=int, default=None,
                      metavar='N', help='split every sequence over N local '
                      'devices (docs/sequence_parallel.md)')
  parser.add_argument('--log_every', type=int, default=10,
                      help='print progress every this many steps')
  parser.add_argument('--allow_config_change', action='store_true',
                      help="resume although the config's data, optimizer "
                      'or schedule changed (never the model)')
  parser.add_argument('--start_afresh', action='store_true',
                      help='only damaged checkpoints left: start at step 0 '
                      '(what is left goes into OUTPUT_DIR/before_afresh/)')
  parser.add_argument('--coordinator_address', default=None,
                      help='several processes: HOST:PORT of the coordinator')
  parser.add_argument('--num_processes', type=int, default=None,
                      help='several processes: how many')
  parser.add_argument('--process_id', type=int, default=None,
                      help="several processes: this one's id")
  parser.add_argument('--distributed_timeout', type=float, default=120,
                      help='several processes: seconds for all of them to '
                      'join before giving up')
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


def check_flags(args):
  """Flags that do not go together: one RunError, before a multi-process
  job starts its processes (pure Python)."""
  import math  # pylint: disable=g-import-not-at-top
  from trax_favor.run.errors import RunError  # pylint: disable=g-import-not-at-top
  timeout = args.distributed_timeout
  if not math.isfinite(timeout) or timeout <= 0:
    raise RunError('--distributed_timeout must be a finite number of seconds '
                   f'> 0, got {timeout}.')


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  cli.main_guard(lambda: check_flags(args), verbose=args.verbose)
  cli.supervise_job(args, argv)  # a multi-process job's process: supervised
  cli.start_up().train(args)  # a signal during start-up: one line


if __name__ == '__main__':
  main()
