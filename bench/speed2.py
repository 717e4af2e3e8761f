"""Speed II (issue 23) on the full 13.6B DiT: default training step, fp8 compute (speed and
quality), CFG sampling step, distilled validation video, compile once
(see frametuner/bench/speed2.py).

    python bench/speed2.py [--parts f,a,b,c,d,e] [--budget-s 540] [--iters 3]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.speed2 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
