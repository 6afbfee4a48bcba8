"""``python -m benchmarks`` = ``ablate bench``."""

import argparse
import shlex
import sys

from benchmarks.config import add_arguments
from benchmarks.run import main_from_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add_arguments(parser)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    sys.exit(main_from_args(parser.parse_args(), command=command))
