"""``python -m implicit_geom``: the ``implicit-geom`` command line."""

import sys

from .cli import main

sys.exit(main())
