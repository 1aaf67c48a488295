"""``python -m edgetune.cli``: the ``edgetune`` command."""

import sys

from edgetune.cli import main

sys.exit(main())
