"""`python -m ash`: the `ash` command line."""

import sys

from ash.cli import main

sys.exit(main())
