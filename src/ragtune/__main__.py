"""`python -m ragtune`: run the command line."""

import sys

from ragtune.cli import main

sys.exit(main())
