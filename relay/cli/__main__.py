"""``python -m relay.cli``: the ``sluice`` command."""

import sys

from relay.cli.main import main

sys.exit(main())
