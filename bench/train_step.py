"""Benchmark of the full 13.6B training and CFG sampling steps (see frametuner/bench/train_step.py).

    python bench/train_step.py [--case 480x832x93] [--kind train] [--mode optimized] ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.train_step import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
