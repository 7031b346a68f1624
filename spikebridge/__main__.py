"""``python -m spikebridge``: the same as the ``spikebridge`` console script."""

from spikebridge.cli import main

raise SystemExit(main())
