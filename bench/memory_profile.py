"""Where the peak GPU memory of one training step goes (see frametuner/bench/memory_profile.py).

    python bench/memory_profile.py --preset int8 [--no-compile] [--case 480x832x29]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.memory_profile import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
