"""python -m pycontainer.cli"""

import sys

from . import main, pause_collector

pause_collector()
sys.exit(main(own_process=True))
