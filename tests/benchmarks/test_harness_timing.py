"""The timing harness's paired statistic: two identical contenders read
1.0, on a fake clock that models what this host does to timings (a program
runs slower right after another one; the host drifts from round to round),
and the statistic without `settle` is shown to be biased there."""

import numpy as np
import pytest

from benchmarks import harness


class FakeHost:
  """A clock that `work` advances: `cost` seconds times the round's drift,
  plus `penalty` when the previous call was another program's."""

  def __init__(self, penalty=0.2, drift=(1.0, 1.7, 1.1, 2.3, 1.0)):
    self.now, self.last, self.penalty, self.drift = 0.0, None, penalty, drift

  def clock(self):
    return self.now

  def work(self, name, cost, i):
    extra = self.penalty if self.last not in (None, name) else 0.0
    self.now += (cost + extra) * self.drift[i % len(self.drift)]
    self.last = name


def _timed(monkeypatch, costs, rounds, settle):
  host = FakeHost()
  monkeypatch.setattr(harness.time, 'perf_counter', host.clock)
  runs = {name: (lambda i, name=name, cost=cost: host.work(name, cost, i))
          for name, cost in costs.items()}
  return harness.time_interleaved(runs, rounds, settle=settle)


@pytest.mark.parametrize('rounds', [3, 7, 15])
def test_identical_contenders_read_one_and_ratios_are_kept(monkeypatch,
                                                           rounds):
  times = _timed(monkeypatch, {'ours': 1.0, 'twin': 1.0, 'other': 1.0},
                 rounds, settle=True)
  assert harness.paired_ratio(times['twin'], times['ours']) == pytest.approx(
      1.0, rel=1e-12)
  # A contender 1.5x as slow reads 1.5 whatever the drift of the rounds.
  times = _timed(monkeypatch, {'ours': 1.0, 'slow': 1.5}, rounds, settle=True)
  assert harness.paired_ratio(times['slow'], times['ours']) == pytest.approx(
      1.5, rel=1e-12)


def test_without_settle_the_place_in_the_round_biases_the_median(monkeypatch):
  """The mutant: rotation alone, an odd number of rounds of two runs (one
  place more often than the other), reads 1.2 for identical twins."""
  times = _timed(monkeypatch, {'ours': 1.0, 'twin': 1.0}, 7, settle=False)
  ratio = harness.paired_ratio(times['twin'], times['ours'])
  assert abs(ratio - 1.0) > 0.1
  assert np.isfinite(ratio)
