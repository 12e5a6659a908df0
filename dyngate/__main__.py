import sys

from dyngate.cli import main

sys.exit(main())
