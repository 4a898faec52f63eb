"""python -m pycontainer.cli"""

import sys

from . import main

sys.exit(main())
