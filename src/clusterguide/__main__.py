import sys

from clusterguide.cli import main

sys.exit(main())
