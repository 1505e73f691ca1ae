import sys

from tlsgate.app.cli import main

sys.exit(main())
