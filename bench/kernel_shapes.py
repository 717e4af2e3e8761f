"""The DiT step's kernels at the model's own shapes and layouts vs the ideal ones
(see frametuner/bench/kernel_shapes.py).

    python bench/kernel_shapes.py [--tokens 37440] [--iters 5] [--out FILE]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.kernel_shapes import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
