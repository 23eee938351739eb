"""``python -m testbed`` is the ``fmb`` command."""

import sys

from testbed.cli.fmb import main

sys.exit(main())
