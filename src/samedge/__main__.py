"""``python -m samedge`` is the ``samedge`` command."""

import sys

from samedge.cli import main

sys.exit(main())
