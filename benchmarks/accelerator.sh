#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU, from the repository root:
#
#   bash benchmarks/accelerator.sh               # installs the gpu and
#                                                # benchmarks extras first
#   bash benchmarks/accelerator.sh --no-install  # the environment as it is
#   bash benchmarks/accelerator.sh --dry-run --out DIR
#                                                # CPU, every size shrunk
#   bash benchmarks/accelerator.sh --image-only  # only jax, numpy, pytest
#                                                # (and torch) installed
#
# Steps: install the extras, check that JAX sees the GPU, run the tests of
# the ops and the layer on it, then the attention benchmark, the peer
# benchmark and the model benchmark (ImageNet64 at 12288 tokens and PG-19
# at 8192, the configs' widths at 2 layers: Performer, the identity-attention
# lower bound, the LSH twin; decoding after prefixes of 128 and 8192). Every JSON
# and PNG goes under --out (default results/gpu). Sized to finish in under
# 8 minutes on one H100/H200-class GPU; the elapsed time of each step is
# printed. --dry-run shrinks every size, skips the install and the GPU
# check, and runs one test, so the whole script runs on a CPU in about a
# minute (tests/benchmarks/test_accelerator.py runs it in the test suite).
#
# --image-only is for an image that has JAX, NumPy, pytest and PyTorch but
# no trax, gin or TensorFlow, and no package registry: it installs nothing
# from the network (performer-pytorch and its small dependencies from
# wheels in .wheels/ if that folder exists: prepare it where a registry is
# reachable with `pip download --no-deps -d .wheels performer-pytorch einops
# local-attention axial-positional-embedding`), runs the ops tests without
# the trax conftest, the peer benchmark's trax-free contenders (ours, the
# authors' form, exact attention and jax.nn.dot_product_attention, with
# cuDNN where the backend has it, performer-pytorch where installed, and
# ours without length blocks: which block size suits a GPU?) up to
# 64K tokens, the guards benchmark (our cores with and without their NaN
# guards, against the authors' form), the relative-positions benchmark and,
# on a machine with several GPUs, the sequence-parallel benchmark; each
# step under a time limit (STEP_LIMIT seconds, default 300; TEST_LIMIT for
# the tests), a step past it reported and the next one run. With --dry-run it runs on a CPU
# (a test runs it with trax, gin and TensorFlow unimportable).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
IMAGE_ONLY=0
INSTALL=1
OUT=results/gpu
PYTHON=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1; INSTALL=0 ;;
    --no-install) INSTALL=0 ;;
    --image-only) IMAGE_ONLY=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    *) echo "accelerator.sh: unknown option $1 (--dry-run, --image-only," \
            "--no-install, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
START=$(date +%s)
step() { echo "== [$(( $(date +%s) - START )) s] $*"; }

# A step past its limit (or failing) is reported and the next one runs.
limited() {
  local rc=0
  timeout --kill-after=10 "${LIMIT:-${STEP_LIMIT:-300}}" "$@" || rc=$?
  [ "$rc" = 0 ] || echo "== step exited with $rc (124: past its limit)"
}

# One sequence over several GPUs (docs/sequence_parallel.md), where the
# machine has more than one; device counts 1, 2, 4, ... up to all of them.
sequence_parallel_step() {
  local counts
  counts=$("$PYTHON" -c "import jax; n = jax.device_count()
print(','.join(str(2 ** i) for i in range(n.bit_length()) if 2 ** i <= n)
      if n > 1 else '')")
  if [ -z "$counts" ]; then
    step "sequence-parallel benchmark: skipped (one device)"
    return
  fi
  step "sequence-parallel benchmark over $counts devices"
  limited "$PYTHON" -m benchmarks.sequence_parallel --host_devices 0 \
    --devices "$counts" --lengths 65536,262144,1048576 \
    --out "$OUT/sequence_parallel"
}
if [ "$IMAGE_ONLY" = 1 ]; then
  # Most of the GPU's memory for XLA, some left for PyTorch's peers.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.8}
  if [ "$INSTALL" = 1 ] && [ -d .wheels ]; then
    step "install: performer-pytorch from .wheels (no network)"
    "$PYTHON" -m pip install -q --no-index --find-links .wheels \
      performer-pytorch || echo "performer-pytorch not installed: skipped"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    export JAX_PLATFORMS=cpu
    TESTS=(tests/ops/test_feature_maps.py -k "softmax")
    PEERS=(--lengths=128 --rounds=1 --n_heads=2 --d_head=16
           --n_random_features=8 --sanity_length=64 --memory=planned)
    RPE=(--lengths=256 --exact_max_len=256 --n_heads=2 --d=16 --m=8
         --max_relative_distance=8 --rounds=1 --decode_prefixes=64
         --decode_tokens=2)
    GUARDS=(--lengths=128 --rounds=1 --n_heads=2 --d=8 --m=16)
  else
    step "check: JAX sees a GPU"
    "$PYTHON" -c "import jax, sys; print('JAX', jax.__version__, jax.devices());
sys.exit(0 if jax.default_backend() == 'gpu' else
         'accelerator.sh: JAX sees no GPU; run with --dry-run on a CPU')"
    # Eight workers (compilation is most of the time), each allocating
    # GPU memory as it needs it.
    # OPS_TESTS: other test paths (e.g. one file after a change there).
    read -r -a TESTS <<< "${OPS_TESTS:-tests/ops}"
    TESTS+=(-m "not slow" -n 8)
    PEERS=(--lengths=1024,4096,16384,65536 --rounds=5 --exact_max_len=16384
           --dpa_max_len=65536 --torch_causal_max_len=16384 --memory=planned)
    RPE=(--lengths=4096,16384 --rounds=3)
    GUARDS=(--lengths=4096,16384,65536 --rounds=5)
  fi
  ONLY=ours_bidir,ours_causal,authors_bidir,exact_bidir,exact_causal
  ONLY=$ONLY,dpa_bidir,dpa_causal,ours_bidir_unblocked,ours_causal_unblocked
  if "$PYTHON" -c "import performer_pytorch" 2>/dev/null; then
    ONLY=$ONLY,performer_pytorch_bidir,performer_pytorch_causal
  fi
  step "tests: the ops, without trax"
  # --noconftest: tests/conftest.py sets up trax; the ops tests need none.
  LIMIT=${TEST_LIMIT:-${STEP_LIMIT:-300}} XLA_PYTHON_CLIENT_PREALLOCATE=false \
    JAX_DEFAULT_MATMUL_PRECISION=highest limited "$PYTHON" -m pytest -q \
    -p no:cacheprovider --noconftest "${TESTS[@]}"
  step "peer benchmark (trax-free contenders)"
  limited "$PYTHON" -m benchmarks.peers --out "$OUT/peers" --only="$ONLY" \
    "${PEERS[@]}"
  step "guards benchmark (what our NaN guards and stabilizer cost)"
  limited "$PYTHON" -m benchmarks.guards --out "$OUT/guards" "${GUARDS[@]}"
  step "relative-positions benchmark"
  limited "$PYTHON" -m benchmarks.rpe --out "$OUT/rpe" "${RPE[@]}"
  sequence_parallel_step
  step "done: results in $OUT"
  exit 0
fi

if [ "$INSTALL" = 1 ]; then
  step "install: the gpu and benchmarks extras"
  "$PYTHON" -m pip install -q -c constraints.txt '.[gpu,benchmarks,test]'
fi

if [ "$DRY_RUN" = 1 ]; then
  export JAX_PLATFORMS=cpu
  TESTS=(tests/test_cpu_speedups.py -k "both_settings_agree and softmax and bidir and plain")
  ATTENTION=(--lengths=128 --favor_extra_lengths= --d_model=32 --n_heads=2
             --n_random_features=8 --repeats=1 --product_rounds=1
             --unblocked_max_len=0 --exact_max_len=128 --lsh_max_len=128
             --core_max_len=128)
  PEERS=(--lengths=128 --rounds=1 --n_heads=2 --d_head=16
         --n_random_features=8 --sanity_length=64
         --only=ours_bidir,ours_causal,authors_bidir,performer_pytorch_bidir
         --memory=planned)
  MODEL=(--width_bindings='D_MODEL=32,D_FF=64,N_HEADS=2,D_HEAD=16,N_LAYERS=1,N_RANDOM_FEATURES=8,POS_D_AXIAL_EMBS=(12,12,8)'
         --imagenet64_bindings='SEQUENCE_LENGTH=768,POS_AXIAL_SHAPE=(16,16,3),LSH_N_BUCKETS=12'
         --models=performer --exact_max_len=0 --pg19_length=0 --depths=
         --steps=1 --prefixes=8,16
         --decode_tokens=2 --decode_width=32,64,2,1)
else
  step "check: JAX sees a GPU"
  "$PYTHON" -c "
import jax, sys
devices = jax.devices()
print('JAX', jax.__version__, devices)
sys.exit(0 if jax.default_backend() == 'gpu' else
         'accelerator.sh: JAX sees no GPU (backend %s); install the gpu extra '
         'or run with --dry-run' % jax.default_backend())"
  TESTS=(tests/ops tests/layers/test_self_attention.py tests/test_cpu_speedups.py
         -m "not slow")
  ATTENTION=(--lengths=1024,4096,16384 --favor_extra_lengths=65536
             --repeats=5 --exact_max_len=16384 --lsh_max_len=16384)
  PEERS=(--lengths=1024,4096,16384,65536 --rounds=5 --exact_max_len=16384
         --dpa_max_len=65536 --torch_causal_max_len=16384 --memory=planned)
  # The configs' widths at 2 layers (compiling 6 layers in each of the six
  # step processes alone would take most of the 8 minutes).
  MODEL=(--width_bindings=N_LAYERS=2 --models=performer,identity,reformer
         --depths=
         --steps=3 --prefixes=128,8192 --decode_tokens=32)
fi

step "tests: ops and the layer"
# float32 products in full precision (GPUs default to TF32 for float32).
JAX_DEFAULT_MATMUL_PRECISION=highest "$PYTHON" -m pytest -q "${TESTS[@]}"
step "attention benchmark"
"$PYTHON" -m benchmarks.attention --out "$OUT/attention" "${ATTENTION[@]}"
step "peer benchmark"
"$PYTHON" -m benchmarks.peers --out "$OUT/peers" "${PEERS[@]}"
step "model benchmark"
"$PYTHON" -m benchmarks.model --out "$OUT/model" "${MODEL[@]}"
sequence_parallel_step
step "done: results in $OUT"
