#!/usr/bin/env bash
# Compiles and links the `cuda` build on a machine with no GPU and no CUDA toolkit, then checks that
# `--device cuda` fails with zerolm's own message. It proves that the CUDA code paths build (candle's
# PTX kernels included); it cannot run them. Developers' tool: CI and users never need it.
#
#   tools/cuda-build-check.sh            # first run: pip downloads ≈ 1.5 GB, the build ≈ 12 min on 2 cores
#   tools/cuda-build-check.sh --tests    # then also the whole test suite on that build (CPU paths)
#
# What it does:
#   1. Installs NVIDIA's CUDA 13.2 compiler, headers and libraries from PyPI into a venv outside the
#      repository ($ZEROLM_CUDA_VENV, default ~/.cache/zerolm-cuda-venv).
#   2. Builds the five device-aware stages and `bench` with `--features cuda` into target/cuda (sm_90 unless
#      CUDA_COMPUTE_CAP says otherwise).
#   3. Links against a stub libcuda (every driver call answers CUDA_ERROR_NO_DEVICE) that it generates
#      from the symbols the build needs, because the driver library only comes with a GPU driver.
#   4. Runs `pretrain --device cuda` and `bench --device cuda` and expects "cannot open GPU 0".
#   5. Builds the four training stages with `--features zerolm-train/nccl` (data parallel on GPUs: NCCL
#      from PyPI's nvidia-nccl-cu13, Open MPI from the distribution) into target/cuda-nccl, and runs
#      `mpirun -np 2 pretrain --device cuda`: both ranks start MPI and report the missing GPU.
#   6. With --tests: `cargo test --release --workspace --features zerolm-train/cuda` on the same build,
#      to show the CUDA feature changes nothing on the CPU (the device test then sees "cannot open GPU 0").
# On a machine with a GPU, install the CUDA toolkit and build normally instead (docs/training.md).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ZEROLM_CUDA_VENV:-$HOME/.cache/zerolm-cuda-venv}
out=target/cuda
stub=$out/stub-libcuda

if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
# One CUDA release throughout: mixing releases fails in ptxas ("Unsupported .version").
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.2.*" "nvidia-nvvm==13.2.*" "nvidia-cuda-crt==13.2.*" \
  "nvidia-cuda-runtime==13.2.*" "nvidia-cuda-cccl==13.2.*" "nvidia-cuda-nvrtc==13.2.*" \
  "nvidia-cublas==13.*" "nvidia-curand==10.*" "nvidia-nccl-cu13==2.*"
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -x "$cu/bin/nvcc" ] || { echo "no nvcc under $cu/bin" >&2; exit 1; }

export CUDA_ROOT=$cu CUDA_PATH=$cu CUDA_HOME=$cu PATH=$cu/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CARGO_TARGET_DIR=$out
pkgs=(-p pretrain -p sft -p dpo -p ref-logprobs -p generate -p bench)

# The wheels ship versioned libraries only; the linker looks for the plain names.
mkdir -p "$stub"
for l in nvrtc:libnvrtc.so.13 curand:libcurand.so.10 cublas:libcublas.so.13 \
  cublasLt:libcublasLt.so.13 cudart:libcudart.so.13; do
  ln -sf "$cu/lib/${l#*:}" "$stub/lib${l%%:*}.so"
done
if [ ! -f "$stub/libcuda.so" ]; then
  # Compile everything but the final link, then read which driver symbols cudarc and candle call.
  cargo build --release "${pkgs[@]}" --features cuda 2>/dev/null || true
  syms=$(nm -u "$out"/release/deps/libcudarc-*.rlib "$out"/release/deps/libcandle_core-*.rlib 2>/dev/null |
    awk '$1=="U"{print $2}' | grep -E '^cu[A-Z]' | grep -vE '^cuGetError(String|Name)$' | sort -u)
  [ -n "$syms" ] || { echo "found no CUDA driver symbols to stub" >&2; exit 1; }
  {
    echo 'int cuGetErrorString(int e, const char **s) { if (s) *s = "no CUDA driver (stub)"; return 0; }'
    echo 'int cuGetErrorName(int e, const char **s) { if (s) *s = "CUDA_ERROR_NO_DEVICE"; return 0; }'
    for s in $syms; do echo "int $s(void) { return 100; }"; done
  } > "$stub/stub.c"
  gcc -shared -fPIC -o "$stub/libcuda.so" "$stub/stub.c" -Wl,-soname,libcuda.so.1
  ln -sf libcuda.so "$stub/libcuda.so.1"
fi
LIBRARY_PATH=$PWD/$stub cargo build --release "${pkgs[@]}" --features cuda

# Runs a command that is expected to fail, prints its output, and leaves the output in $msg and the exit
# status in $rc.
capture() {
  set +e
  msg=$("$@" 2>&1)
  rc=$?
  set -e
  echo "$msg"
}

capture env LD_LIBRARY_PATH=$stub:$cu/lib RUST_BACKTRACE=0 "$out/release/pretrain" --device cuda \
  --preset tiny --tokenizer tests/fixtures/tokenizer --input /nonexistent.parquet --out "$out/never"
if [ $rc -ne 0 ] && grep -q 'cannot open GPU 0' <<<"$msg" && [ ! -e "$out/never" ]; then
  echo "cuda build check: built and linked; --device cuda reports the missing GPU (exit $rc)"
else
  echo "cuda build check: unexpected result (exit $rc)" >&2
  exit 1
fi
capture env LD_LIBRARY_PATH=$stub:$cu/lib RUST_BACKTRACE=0 "$out/release/bench" --device cuda --python none
if [ $rc -eq 1 ] && grep -q 'cannot open GPU 0' <<<"$msg"; then
  echo "cuda build check: bench --device cuda reports the missing GPU (exit $rc)"
else
  echo "cuda build check: bench gave an unexpected result (exit $rc)" >&2
  exit 1
fi
# Data parallel on GPUs: the nccl feature (NCCL for gradients, MPI for the ranks).
tools/install-mpi.sh
nccl=$("$venv/bin/python" -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))')
ln -sf "$nccl/libnccl.so.2" "$stub/libnccl.so"
LIBRARY_PATH=$PWD/$stub CARGO_TARGET_DIR=target/cuda-nccl cargo build --release \
  -p pretrain -p sft -p dpo -p ref-logprobs --features zerolm-train/nccl
capture env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 LD_LIBRARY_PATH=$stub:$cu/lib:$nccl \
  RUST_BACKTRACE=0 mpirun -np 2 --oversubscribe target/cuda-nccl/release/pretrain --device cuda --preset tiny \
  --tokenizer tests/fixtures/tokenizer --input /nonexistent.parquet --out target/cuda-nccl/never
if [ $rc -ne 0 ] && grep -q 'cannot open GPU' <<<"$msg" && [ ! -e target/cuda-nccl/never ]; then
  echo "nccl build check: built and linked; under mpirun each rank reports the missing GPU (exit $rc)"
else
  echo "nccl build check: unexpected result (exit $rc)" >&2
  exit 1
fi
if [ "${1:-}" = "--tests" ]; then
  LIBRARY_PATH=$PWD/$stub LD_LIBRARY_PATH=$PWD/$stub:$cu/lib cargo test --release --workspace --features zerolm-train/cuda
fi
