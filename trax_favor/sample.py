"""Sample from a trained model: `python -m trax_favor.sample` / `trax-favor-sample`.

Text (PG-19 or the offline default), continuing a prompt:

    python -m trax_favor.sample --config_file=gin/offline_default.gin \
        --output_dir=runs/default --prompt='def main(' --length=200

Images (ImageNet64 configs), completing the lower rows of a PNG or sampling
from scratch, written as a PNG:

    python -m trax_favor.sample --config_file=gin/imagenet64/performer_6l.gin \
        --output_dir=runs/i64 --image=cat.png --prompt_rows=32 --png=out.png

The model runs in predict mode: the prompt in one call, then one token per
step, with a constant-size state per sequence.
"""

import argparse
import sys

from trax_favor.run import cli


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m trax_favor.sample',
      description='Sample from a trained trax_favor model (predict mode).')
  cli.add_config_flags(parser, 'the training run directory (its checkpoint);'
                         ' give the config files and bindings it was '
                         'trained with')
  parser.add_argument('--prompt', default='', help='text: prompt to continue')
  parser.add_argument('--length', type=int, default=256,
                      help='text: bytes to generate')
  parser.add_argument('--image', default=None,
                      help='image: PNG whose top rows prompt the model')
  parser.add_argument('--prompt_rows', type=int, default=0,
                      help='image: rows of --image to keep')
  parser.add_argument('--png', default='sample.png',
                      help='image: where to write the result')
  parser.add_argument('--temperature', type=float, default=1.0,
                      help='0 takes the most likely token')
  parser.add_argument('--seed', type=int, default=0)
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  cli.start_up().sample(args)  # a signal during start-up: one line


if __name__ == '__main__':
  main()
