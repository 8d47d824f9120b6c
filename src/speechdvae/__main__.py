"""`python -m speechdvae` runs the command line (also under `torchrun ... -m speechdvae train`)."""

import sys

from .cli import main

sys.exit(main())
