"""Print the N-th shell command of the README's Quick start (1 = install + demo, 2 = tests).

CI runs exactly these, so the README's two commands cannot drift from what is tested.
"""

import re
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
print(blocks[int(sys.argv[1]) - 1].strip())
