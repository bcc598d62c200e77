"""``python -m romeways`` is the ``romeways`` command."""

import sys

from ._cli import main

sys.exit(main())
