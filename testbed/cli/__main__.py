"""``python -m testbed.cli`` is the ``fmb`` command (as is ``python -m testbed``)."""

import sys

from testbed.cli.fmb import main

sys.exit(main())
