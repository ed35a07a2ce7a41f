import sys

from flowrun.cli.main import main

sys.exit(main())
