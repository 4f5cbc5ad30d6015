"""``python -m rayfleet_launcher '<command>'`` (shipped with a job), or ``python -m rayfleet.launcher`` where rayfleet
is installed."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
