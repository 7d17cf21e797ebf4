#!/usr/bin/env bash
# Runs the GPU check on a machine with an NVIDIA GPU and writes a report into OUT_DIR.
#
# It runs the programs that scripts/build-cuda.sh compressed into .cuda/carry (no Rust toolchain is
# needed here), so build them first on any Linux x86-64 machine and bring the folder along:
#   1. device selection: a CUDA device that exists, one that does not, and the driver hidden behind
#      the toolkit's stub libcuda, each printed with pegan's message;
#   2. the CLI end to end on the GPU: SinGAN training with the tiny preset, then sampling and
#      retargeting;
#   3. gpu_check: CPU against GPU parity of SinGAN generation and retargeting and of StyleGAN2
#      sampling, penalties and their gradients, short training runs, and timings on the GPU;
#   4. where python3 has PyTorch with CUDA, bench/gpu_torch.py times the same work in PyTorch and
#      writes the comparison.
#
# Usage: scripts/gpu-check.sh OUT_DIR [--no-torch]
#
# Environment: PEGAN_CARRY_DIR (default .cuda/carry), PEGAN_GPU_CHECK_TIMEOUT (seconds for gpu_check,
# default 330), PEGAN_TORCH_TIMEOUT (seconds for PyTorch, default 100). With the defaults the whole
# script ends within 8 minutes.
#
# Output files: gpu-check.log, report.json, report.md, and with PyTorch torch.json and comparison.md.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: scripts/gpu-check.sh OUT_DIR [--no-torch]}
use_torch=true
if [[ ${2:-} == --no-torch ]]; then
  use_torch=false
elif [[ -n ${2:-} ]]; then
  echo "gpu-check.sh: unknown argument '$2'; usage: scripts/gpu-check.sh OUT_DIR [--no-torch]" >&2
  exit 2
fi
carry=${PEGAN_CARRY_DIR:-.cuda/carry}
check_timeout=${PEGAN_GPU_CHECK_TIMEOUT:-330}
torch_timeout=${PEGAN_TORCH_TIMEOUT:-100}
mkdir -p "$out"
log=$out/gpu-check.log
exec > >(tee "$log") 2>&1
started=$SECONDS
say() { echo "== $* ($((SECONDS - started)) s)"; }

# scripts/build-cuda.sh compresses the programs with xz; python3's lzma unpacks them where xz is missing.
bin=$(mktemp -d)
for program in gpu_check pegan; do
  packed=$carry/$program.xz
  if [[ ! -f $packed ]]; then
    echo "gpu-check.sh: $packed is missing: run scripts/build-cuda.sh and bring $carry along"
    exit 1
  fi
  if command -v xz >/dev/null; then
    xz -dc "$packed" >"$bin/$program"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$packed" "$bin/$program"
  fi
  chmod +x "$bin/$program"
done
cat "$carry/BUILD" 2>/dev/null

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
nproc

# The CUDA 13 runtime libraries (cudart, cuBLAS, cuRAND, NVRTC): from the CUDA toolkit if there is
# one, else from the nvidia-* wheels installed with PyTorch.
say "CUDA libraries"
library_dirs=()
for dir in /usr/local/nvidia/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $dir ]] && library_dirs+=("$dir")
done
if command -v python3 >/dev/null; then
  while IFS= read -r dir; do
    library_dirs+=("$dir")
  done < <(python3 - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    for root in nvidia.__path__:
        for lib in sorted(glob.glob(os.path.join(root, "*", "lib"))):
            print(lib)
except ImportError:
    pass
EOF
  )
fi
for dir in "${library_dirs[@]}"; do
  LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir
done
export LD_LIBRARY_PATH
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
missing=$(ldd "$bin/gpu_check" | grep "not found")
ldd "$bin/gpu_check" | grep -E 'libcuda|libcudart|libcublas|libcurand|libnvrtc'
if [[ -n $missing ]]; then
  echo "gpu-check.sh: libraries not found: $missing"
  exit 1
fi

say "device selection"
"$bin/gpu_check" --probe-device cuda:0
"$bin/gpu_check" --probe-device cuda:64
if [[ -f $carry/no-driver/libcuda.so.1 ]]; then
  echo "with the toolkit's stub in place of the driver:"
  LD_LIBRARY_PATH=$carry/no-driver:$LD_LIBRARY_PATH "$bin/gpu_check" --probe-device cuda:0
  LD_LIBRARY_PATH=$carry/no-driver:$LD_LIBRARY_PATH "$bin/gpu_check" --probe-device cuda:0,cpu
fi

say "CLI on cuda:0"
cli_dir=$(mktemp -d)
cli_ok=true
timeout 120 "$bin/pegan" singan train examples/data/balloons.png --variant csg --preset tiny --device cuda:0 \
  -o "$cli_dir/tiny.pegan" || cli_ok=false
if $cli_ok; then
  timeout 60 "$bin/pegan" singan sample "$cli_dir/tiny.pegan" -n 2 --device cuda:0 -o "$cli_dir/samples" || cli_ok=false
  timeout 60 "$bin/pegan" singan retarget "$cli_dir/tiny.pegan" --width 64 --height 24 --device cuda:0 \
    -o "$cli_dir/wide.png" || cli_ok=false
fi
ls -R "$cli_dir"
echo "CLI on cuda:0: $($cli_ok && echo passed || echo FAILED)"

say "gpu_check (timeout ${check_timeout} s)"
timeout "$check_timeout" "$bin/gpu_check" --device cuda:0 --reference cpu --out "$out"
check_status=$?
echo "gpu_check exit status: $check_status"

torch_status=skipped
if $use_torch && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  say "PyTorch (timeout ${torch_timeout} s)"
  if timeout "$torch_timeout" env PYTHONUNBUFFERED=1 python3 bench/gpu_torch.py --out "$out/torch.json" \
    --pegan-report "$out/report.json" --markdown "$out/comparison.md"; then
    torch_status=done
    cat "$out/comparison.md"
  else
    torch_status=failed
  fi
fi

say "summary"
echo "CLI: $($cli_ok && echo passed || echo FAILED); gpu_check: exit $check_status; PyTorch: $torch_status"
if [[ $check_status -eq 0 ]] && $cli_ok; then
  exit 0
fi
exit 1
