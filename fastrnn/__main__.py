"""`python -m fastrnn bench ...`: the same as the `fastrnn` console command."""
import sys

from .cli import main

sys.exit(main())
