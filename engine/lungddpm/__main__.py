"""`python -m lungddpm` runs the command line."""

import sys

from lungddpm.cli import main

sys.exit(main())
