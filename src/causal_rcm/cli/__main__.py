"""``python -m causal_rcm.cli``: the same as the ``causal-rcm`` command."""
import sys

from . import main

sys.exit(main())
