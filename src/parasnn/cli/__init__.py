"""The command line: every argparse parser lives in this package (``parasnn <command>``)."""
from .main import COMMAND_MODULES, DEMO_CHECKPOINT, DEMO_TEST_SLICE, build_parser, main

__all__ = ["main", "build_parser", "COMMAND_MODULES", "DEMO_CHECKPOINT", "DEMO_TEST_SLICE"]
