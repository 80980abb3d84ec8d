"""``python -m fabric.daemons.manager``: how fabric.cluster starts the manager."""
import sys

from fabric.daemons.manager import main

sys.exit(main())
