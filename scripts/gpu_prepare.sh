#!/usr/bin/env bash
# Fills .gpu/ (ignored by git) with what scripts/gpu_check.sh needs on a GPU machine that reaches no network:
# the full MNIST gzipped (MNIST_RAW: a folder of the four IDX files) and wheels of the packages its image lacks.
# Then: device run "bash scripts/gpu_check.sh" with carry [".gpu"] (about 30 MB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MNIST_RAW=${MNIST_RAW:-image_gen/data/MNIST/raw}
mkdir -p .gpu/mnist .gpu/wheels
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  gzip -c "$MNIST_RAW/$f" > ".gpu/mnist/$f.gz"
done
# The GPU image (python 3.12) has torch, numpy, scipy, matplotlib, tqdm, httpx, pytest; these it lacks.
for spec in av==18.1.0 soundfile==0.14.0 pesq==0.0.4 pystoi==0.4.1 fastapi==0.165.0 uvicorn==0.54.0 \
            python-multipart==0.0.34 safetensors==0.8.0 starlette pydantic pydantic-core annotated-types \
            typing-inspection; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "$spec" || echo "note: no wheel for $spec"
done
du -sh .gpu
