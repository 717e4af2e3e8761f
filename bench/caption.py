"""Captioning throughput of random-weight Qwen2.5-VL-7B, bf16 and int8 (see frametuner/bench/caption.py).

    python bench/caption.py [--batch_size 8] [--frames 16] [--tokens 200] [--modes bf16,int8]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.caption import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
