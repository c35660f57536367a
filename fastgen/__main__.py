"""`python -m fastgen ...` (also what `torchrun -m fastgen train ...` runs)."""
import os
import sys

from fastgen.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun worker: its process group is destroyed and its checkpoint written and closed by
    # now. Leave without the interpreter's finalisation, where gloo's and DDP's C++ objects that
    # Python still holds are torn down in no set order; that teardown rarely aborted a worker
    # ("terminate called without an active exception") after a successful run, and torchrun then
    # failed the whole job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
sys.exit(code)
