"""`python -m catflow <command>`: the same as the `catflow` console script."""

import sys

from catflow import cli

sys.exit(cli.main())
