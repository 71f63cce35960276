"""python -m pyecho.bench: the native-vs-Python benchmark."""

import sys

from . import main

sys.exit(main(prog="python -m pyecho.bench"))
