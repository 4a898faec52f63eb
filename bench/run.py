"""pycontainer's benchmarks (the harness of bench/harness.py), kept as the
script `make bench` ran before ``python -m bench``:

    .venv/bin/python bench/run.py [--quick] [--rows KEY,...] [--out FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is on sys.path, not the repository holding it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
