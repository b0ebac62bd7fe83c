"""``python -m optstab.transformer``: the Post-LN vs Pre-LN experiment (see ``optstab.transformer.cli``)."""

import sys

from optstab.transformer.cli import main

sys.exit(main())
