"""``python -m maskkv.bench.worker``: measure one configuration in a fresh process (see ``runner``)."""

import sys

from .runner import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
