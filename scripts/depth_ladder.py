"""Layer-depth ladder: Performer vs its Reformer twin at 6, 12, 24 layers.

    python scripts/depth_ladder.py --preset cpu    # about 30 min, 2 CPU cores
    python scripts/depth_ladder.py --preset full \
        --config="trax_favor.imagenet64_inputs.data_dir='/data/tfds'"

Rerun the same command after an interruption: finished rungs are skipped,
an unfinished one resumes from its checkpoint. Writes <out>.json, .md, .png.
"""

import argparse
import sys

from trax_favor.experiments import ladder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='cpu', choices=sorted(
      ladder.PRESETS))
  parser.add_argument('--out', default=None,
                      help='report prefix (default results/ladder_<preset>)')
  parser.add_argument('--work_dir', default=None,
                      help='rung checkpoints (default runs/ladder_<preset>)')
  parser.add_argument('--config', action='append', default=[],
                      help='extra gin binding for every rung (repeatable)')
  parser.add_argument('--stop_after', type=int, default=None,
                      help='train at most this many rungs, then report')
  args = parser.parse_args(argv)
  ladder.run_ladder(args.preset, args.work_dir or f'runs/ladder_{args.preset}',
                    args.out or f'results/ladder_{args.preset}', args.config,
                    args.stop_after)


if __name__ == '__main__':
  sys.exit(main())
