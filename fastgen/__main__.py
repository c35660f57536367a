"""`python -m fastgen ...` (also what `torchrun -m fastgen train ...` runs)."""
import sys

from fastgen.cli import main

sys.exit(main())
