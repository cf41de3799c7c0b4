"""trax 1.4.1 on current JAX: the only place where trax_favor patches anything.

  patching      the registry: each fix applied once, recorded, undoable
  fixes         the fixes, one per trax call, trax.trainer's import, and
                `safe_unpickling`: trax's checkpoint readers through
                trax_favor.safe_pickle, for the length of a context
  projection_fixes
                two fixes for FAVOR layers, not for JAX: trax's
                init_from_file(weights_only=True) restores their fixed
                projections (or marks them missing), and their refusal
                passes through trax's LayerError as one line
  import_hook   the finder that applies them when trax is imported
  devices       `one_trax_device`: trax's Loop built for one device on a
                host with more (the training's --sequence_parallel)
  cpu_options   `trax_jit_options`: trax's jit with the CPU speed-ups'
                compiler options (trax_favor.ops.cpu_speedups)

Trax's last release (1.4.1, 2021) calls JAX APIs that have since changed or
gone. Each fix below is the smallest change that restores one upstream call
and names that call. Rules:

- A fix decides whether it is needed by a version, `hasattr` or a signature,
  never by running JAX code (that would start the backend: on a GPU it
  preallocates memory, and `jax.distributed.initialize()` must come first).
- A fix changes trax's modules only: the name trax looks up (an entry of
  trax's fastmath backend table, a function of a trax module, or the `jax`
  global of one trax module, replaced by a view of jax with one name added).
  No attribute of `jax` itself changes, so other code that feature-detects
  JAX sees JAX as it is.
- Each is applied once; `applied()` says which were needed, and `undone(name)`
  reverts one temporarily (the tests use it to show the fix is needed).

`install_import_hook()` (called by `import trax_favor`) adds a finder to
`sys.meta_path` that acts on trax's own modules only: it applies the fixes
when `trax` finishes importing and speeds up `trax.layers.assert_shape`
(see `import_hook`); it removes itself once trax has loaded. Where trax was
imported before trax_favor, `install_import_hook()` applies the fixes at
once (the probes run no JAX code, so this starts nothing).

This package must not import trax, or anything heavy, at module level:
`import trax_favor` imports it.
"""

from trax_favor.compat import projection_fixes  # pylint: disable=unused-import
from trax_favor.compat.cpu_options import trax_jit_options
from trax_favor.compat.devices import commit_to_one_device
from trax_favor.compat.devices import one_trax_device
from trax_favor.compat.fixes import import_trainer
from trax_favor.compat.fixes import jit_with_options
from trax_favor.compat.fixes import safe_unpickling
from trax_favor.compat.import_hook import import_trax
from trax_favor.compat.import_hook import install_import_hook
from trax_favor.compat.patching import applied
from trax_favor.compat.patching import apply
from trax_favor.compat.patching import undone
