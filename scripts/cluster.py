#!/usr/bin/env python
"""Start/stop a Spark standalone cluster on loopback from the installed pyspark.

    .venv/bin/python scripts/cluster.py start    # master + 2 workers (1 core each); prints the master URL
    .venv/bin/python scripts/cluster.py status
    .venv/bin/python scripts/cluster.py stop
    .venv/bin/python scripts/cluster.py run      # foreground: stops on Ctrl-C

See ``sparkvision.testing.cluster`` for what it does and how the daemons are stopped.
"""

import sys

from sparkvision.testing.cluster import main

if __name__ == "__main__":
    sys.exit(main())
