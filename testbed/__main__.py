"""``python -m testbed`` is the ``fmb`` command."""

import sys

from testbed.cli import main

sys.exit(main())
