"""``python -m pycontainer.sidecar [OPTIONS] -- CMD ARGS...``: the sidecar, as
``pycontainer run`` (for launchers that run a module, such as the manager's
process runtime)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
