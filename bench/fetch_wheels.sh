#!/usr/bin/env bash
# Download the wheels the GPU image lacks into .whl/ (git-ignored), for Python 3.12 x86_64.
# The device machine has no network: carry .whl with the run and install it with bench/install_wheels.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl "$@"; }
# frametuner's own needs that the image lacks (diffusers for the model base class and VAE,
# ftfy + wcwidth for prompt cleaning, PyAV that frametuner.data imports), then the quantisation backends (issue 8).
download diffusers==0.42.1 ftfy==6.3.1 wcwidth==0.2.13 av==18.1.0
download optimum-quanto==0.2.7 ninja==1.13.0
download "${TORCHAO_SPEC:-torchao==0.16.0}"
# pydantic (the config) is not in every image: bench/install_wheels.sh installs .whl/extra only if missing.
mkdir -p .whl/extra
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl/extra \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
# pytest for the GPU-marked tests (tests/*_gpu.py, @pytest.mark.gpu): installed only if missing.
mkdir -p .whl/test
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl/test \
  pytest==8.4.2 iniconfig==2.1.0 pluggy==1.6.0
ls -la .whl
