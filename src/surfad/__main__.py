"""`python -m surfad ...`: the command line (so that `torchrun -m surfad train ...` works)."""

import sys

from surfad.cli import main

sys.exit(main())
