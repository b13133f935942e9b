"""`python -m qplab.experiments --quick --out results/quick`"""
import sys

from .runner import main

sys.exit(main())
