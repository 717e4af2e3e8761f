"""Multi-GPU scaling of the 13.6B training step, DDP and FSDP2 (see frametuner/bench/multi_gpu.py).

    python bench/multi_gpu.py [--gpus 1,2,4,8] [--strategy ddp --strategy fsdp] [--model-type lora --model-type full] ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frametuner.bench.multi_gpu import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
