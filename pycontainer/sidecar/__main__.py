"""``python -m pycontainer.sidecar [OPTIONS] -- CMD ARGS...``: the sidecar, as
``pycontainer run``. Launchers that run a module (the manager's process
runtime) give the container as a ContainerSpec in ``$PYCONTAINER_SPEC``
instead of a command, and run it with ``python -P`` so that their working
directory cannot shadow the installed pycontainer."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
