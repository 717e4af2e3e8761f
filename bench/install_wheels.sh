#!/usr/bin/env bash
# On the device machine: install carried wheels into /tmp/site and the repo itself on PYTHONPATH.
# Usage: source bench/install_wheels.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
