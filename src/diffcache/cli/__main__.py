"""``python -m diffcache.cli ...`` (also what ``accelerate launch -m diffcache.cli`` runs)."""

import sys

from . import main

sys.exit(main())
