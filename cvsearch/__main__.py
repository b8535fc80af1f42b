"""``python -m cvsearch``: the command line."""

import sys

from cvsearch.cli import main

sys.exit(main())
