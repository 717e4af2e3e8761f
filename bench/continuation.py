"""Video continuation on the full 13.6B DiT: KV cache vs none, and a one-minute long video
(see frametuner/bench/continuation.py).

    python bench/continuation.py [--compile] [--long-video [--long-segments 11]] [--skip-step]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.continuation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
