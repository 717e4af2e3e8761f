#!/usr/bin/env bash
# Wheels for bench/caption.py on the device machine (Python 3.12 x86_64, no network) into .whl-caption/
# (git-ignored by /.whl*/). The captioner runs Qwen2.5-VL through transformers 5 (the version frametuner is
# developed with) and optimum-quanto; the GPU image's transformers may be older, so the bench carries the
# transformers stack (huggingface-hub and its HTTP client included) and installs it ahead of the image's:
#   bash bench/fetch_caption_wheels.sh            # here, once
#   run(carry=[".whl-caption"], command="bash bench/caption_gpu.sh")
# About 22 MB: carried alone (not with .whl/, 47 MB), to stay under the 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl-caption
mkdir -p "$out"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d "$out" "$@"; }
download transformers==5.25.0 tokenizers==0.23.3 huggingface-hub==2.4.0 safetensors==0.8.0 accelerate==1.16.0 \
  hf-xet==1.8.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 anyio==4.16.0 h11==0.16.0 idna==3.21 \
  certifi==2026.10.19.post1 click==8.5.1 filelock==4.3.2 fsspec==2026.9.0 typing-extensions==4.16.0 \
  regex==2026.12.2 pyyaml==6.0.4 psutil==7.2.2 tqdm==4.70.1 packaging==26.4 \
  optimum-quanto==0.2.7 ninja==1.13.0
du -sh "$out"
