#!/usr/bin/env bash
# The GPU check: one prepared run for the few minutes a GPU is lent (docs/gpu.md). From the repository root:
#
#   bash scripts/gpu_prepare.sh          # here, with internet: MNIST and the wheels the GPU image lacks -> .gpu/
#   bash scripts/gpu_check.sh            # there (carry .gpu): about 8 minutes on one H100
#
# Writes every figure to $OUT/gpu_check.txt (./gpu_check.txt without $OUT): the CUDA tests (pytest -m gpu), the
# image benchmark, the default 20-epoch image run's wall time (evaluations included) and its FID at N = 1,000
# (classifier backbone unless the Inception weights are there), a DDIM-50 sampling rate, the audio benchmark
# (training clips/s, each inverse's clips/s), one epoch each of the VAE, the learned prior and the vocoder on
# synthetic music, the API on cuda, and, while time is left, FID at N = 10,000 for three samplers. DEVICE=cpu QUICK=1
# runs the same steps tiny, to check the script.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-.}
REPORT="$OUT/gpu_check.txt"
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PY:-python3}
WORK=$(mktemp -d)
: > "$REPORT"

if [[ -d .gpu/wheels ]] && ls .gpu/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The project's packages without installing it (pip install -e . would need setuptools from the network): each
# model's folder, and the repository root for api/ and demo/.
export PYTHONPATH=$PWD/image_gen:$PWD/audio_gen:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [[ -d .gpu/mnist ]]; then
  mkdir -p image_gen/data/MNIST/raw
  for f in .gpu/mnist/*.gz; do gunzip -c "$f" > "image_gen/data/MNIST/raw/$(basename "$f" .gz)"; done
fi

section() { echo "== $1 ($(date +%T))" | tee -a "$REPORT"; }
run() {  # run a command, its output (last 40 lines) into the report, with its wall time
  local start=$SECONDS
  "$@" > "$WORK/log" 2>&1
  local rc=$?
  tail -n 40 "$WORK/log" >> "$REPORT"
  echo "-- exit $rc, $((SECONDS - start)) s wall: $*" | tee -a "$REPORT"
}

section "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >> "$REPORT" 2>&1

section "CUDA tests (pytest -m gpu)"
run $PY -m pytest -q -m gpu tests/test_devices.py

# QUICK: the same steps on tiny data, without the benchmarks and the FID sampling that only a GPU makes short.
if (( QUICK )); then EPOCHS=1; IMAGE_DATA=(--data_dir "$WORK/mnist"); IMAGE_EXTRA=(--fid_samples 0); else
  EPOCHS=20; IMAGE_DATA=(); IMAGE_EXTRA=(); fi
if (( QUICK )); then
  $PY - "$WORK/mnist" <<'EOF'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from conftest import write_idx
write_idx(Path(sys.argv[1]) / "MNIST" / "raw", n_train=256, n_test=128)
EOF
fi

if (( ! QUICK )); then
  section "image benchmark"
  run $PY image_gen/image_gen.py --mode benchmark --device "$DEVICE"
fi

section "the default image run: $EPOCHS epochs, every evaluation included (target: 90 s on one H100)"
run $PY image_gen/image_gen.py --epochs "$EPOCHS" --device "$DEVICE" "${IMAGE_DATA[@]}" "${IMAGE_EXTRA[@]}" \
  --checkpoint "$WORK/ddpm.pt" --results_dir "$WORK/image_results" --cache_dir "$WORK/cache"
run $PY image_gen/image_gen.py --mode infer --device "$DEVICE" "${IMAGE_DATA[@]}" "${IMAGE_EXTRA[@]}" --checkpoint "$WORK/ddpm.pt" \
  --results_dir "$WORK/image_results" --cache_dir "$WORK/cache"

section "audio: synthetic music, the benchmark, one epoch of each training"
(( QUICK )) && MUSIC_SECONDS=8 || MUSIC_SECONDS=30
$PY - "$WORK/music" "$MUSIC_SECONDS" <<'EOF'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from conftest import write_music_file
for i, split in enumerate(["train", "train", "valid", "test"]):
    write_music_file(Path(sys.argv[1]) / split / f"song{i}.wav", float(sys.argv[2]), i)
EOF
AUDIO=(--audio_dir "$WORK/music" --cache_dir "$WORK/audio_cache" --device "$DEVICE")
(( QUICK )) || run $PY audio_gen/audio_gen.py --mode benchmark "${AUDIO[@]}"
run $PY audio_gen/audio_gen.py --model vae --epochs 1 "${AUDIO[@]}" --checkpoint "$WORK/vae.pt" \
  --results_dir "$WORK/audio_results"
run $PY audio_gen/audio_gen.py --mode train_prior --epochs 1 --checkpoint "$WORK/vae.pt" --prior "$WORK/prior.pt" \
  --cache_dir "$WORK/audio_cache" --device "$DEVICE" --results_dir "$WORK/audio_results"
run $PY audio_gen/audio_gen.py --mode train_vocoder --epochs 1 "${AUDIO[@]}" --vocoder "$WORK/vocoder.pt" \
  --results_dir "$WORK/audio_results"
run $PY audio_gen/audio_gen.py --mode generate --checkpoint "$WORK/vae.pt" --prior "$WORK/prior.pt" \
  --inverse vocoder-pghi --vocoder "$WORK/vocoder.pt" --num_samples 4 --device "$DEVICE" \
  --cache_dir "$WORK/audio_cache" --results_dir "$WORK/generated"

section "API on $DEVICE: 16 concurrent clients of 4 digits, batched and not"
(( QUICK )) && SECONDS_EACH=5 || SECONDS_EACH=20
run $PY scripts/load_api.py --image_checkpoint "$WORK/ddpm.pt" --device "$DEVICE" --clients 16 --n 4 \
  --seconds "$SECONDS_EACH" --out "$WORK/load_api.json"

section "samplers at N = 10,000 on the default run's checkpoint (DDIM-50 / DDIM-200 / DPM-Solver++-10), if time is left"
if (( ! QUICK && SECONDS < 420 )); then
  run $PY scripts/solver_table.py --checkpoint "$WORK/ddpm.pt" --n 10000 --settings ddim:50 ddim:200 dpm++2m:10 \
    --device "$DEVICE" --cache_dir "$WORK/cache" --out "$WORK/solver10k.json"
else
  echo "skipped ($SECONDS s used)" >> "$REPORT"
fi

section "done"
rm -rf "$WORK"
