"""``python -m pamm`` (also ``torchrun ... -m pamm train ...``)."""

import sys

from .cli import main

sys.exit(main())
