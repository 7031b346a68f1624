"""``python -m spikebridge``: the same as the ``spikebridge`` console script."""

from spikebridge.cli import main

if __name__ == "__main__":  # a spawned worker (demo --jobs) imports this module too
    raise SystemExit(main())
