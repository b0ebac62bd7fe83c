"""``python -m optstab.wrn``: the stride-instability experiment (see ``optstab.wrn.cli``)."""

import sys

from optstab.wrn.cli import main

sys.exit(main())
