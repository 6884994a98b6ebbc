"""`python -m adnanny ...` = the `adnanny` console script."""

import sys

from adnanny.cli import main

sys.exit(main())
