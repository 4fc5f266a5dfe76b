"""``python -m parasnn.cli`` (and ``torchrun ... -m parasnn.cli``) runs the command line."""
import sys

from .main import main

sys.exit(main())
