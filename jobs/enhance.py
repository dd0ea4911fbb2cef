"""Entry point for `ray job submit --working-dir . -- python jobs/enhance.py INPUT OUTPUT [options]`.

Same program as `dce-batch enhance`; see `python jobs/enhance.py --help`.
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the project is not pip-installed on the cluster:
# make the uploaded copy of the package importable (Ray puts the working dir on workers' path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dce_batch.cli import enhance_main, program  # noqa: E402

if __name__ == "__main__":
    program(command=enhance_main)
