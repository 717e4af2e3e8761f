"""Memory presets of the full 13.6B LoRA training step (see frametuner/bench/memory.py).

    python bench/memory.py [--preset bf16 --preset 24gb-int8] [--case 480x832x93] [--list]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.memory import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
