"""``python -m attrib run ...`` / ``python -m attrib report ...`` (and under ``torchrun ... -m attrib run``)."""

import sys

from .runs.cli import main

if __name__ == "__main__":
    sys.exit(main())
