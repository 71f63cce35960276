"""python -m pyecho: the command line (pyecho.cli)."""

import sys

from .cli import main

sys.exit(main())
