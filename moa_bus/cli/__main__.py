"""`python -m moa_bus.cli`: the command line `moa`."""
import sys

from moa_bus.cli import main

sys.exit(main())
