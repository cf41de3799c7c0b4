"""Memory figures of this process: the device allocator's where it keeps
statistics (GPU, TPU), else the process's resident set (CPU)."""

import os
import resource

import jax


def process_memory_bytes(field):
  """A memory field of /proc/self/status (Linux), e.g. VmRSS, in bytes."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise ValueError(f'no {field} in /proc/self/status')


def reset_peak_memory():
  """Restarts the resident set's high-water mark (VmHWM), so that what ran
  before (e.g. XLA compilation) no longer counts in peak_memory_bytes."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def device_memory_stats():
  """This process's first device's allocator statistics; {} where it keeps
  none (CPU). Local device: in a multi-process job jax.devices()[0] may
  belong to another process."""
  return jax.local_devices()[0].memory_stats() or {}


def memory_in_use_bytes():
  """What peak_memory_bytes measures, now: the device's allocation if it
  reports one, else this process's resident set. The baseline to subtract
  from a later peak_memory_bytes (never mix device and host bytes)."""
  stats = device_memory_stats()
  if 'bytes_in_use' in stats:
    return int(stats['bytes_in_use'])
  return process_memory_bytes('VmRSS')


def peak_memory_bytes():
  """The device's peak allocation if it reports one (since the process
  started: reset_peak_memory does not reach it), else this process's peak
  resident set size (CPU; since the last reset_peak_memory on Linux)."""
  stats = device_memory_stats()
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use'])
  if os.path.exists('/proc/self/status'):
    return process_memory_bytes('VmHWM')
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
