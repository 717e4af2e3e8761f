#!/usr/bin/env bash
# On the device machine, with .whl-caption carried (bench/fetch_caption_wheels.sh): install the transformers 5
# stack and optimum-quanto ahead of the image's packages, then time the captioner (bf16, then int8), < 4 min.
#   run(carry=[".whl-caption"], command="bash bench/caption_gpu.sh")
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-caption .whl-caption/*.whl
export PYTHONPATH=/tmp/site-caption:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, optimum.quanto; print('torch', torch.__version__, 'transformers', transformers.__version__, flush=True)"
timeout 225 python3 bench/caption.py --batch_size 8 --frames 16 --tokens 200 --modes bf16,int8 --budget_s 170 "$@"
status=$?
mkdir -p "${OUT:-/tmp/out}" && cp bench/results.jsonl bench/RESULTS.md "${OUT:-/tmp/out}/" 2>/dev/null
exit $status
