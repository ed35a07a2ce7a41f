import sys

from flowrun.cli import main

sys.exit(main())
