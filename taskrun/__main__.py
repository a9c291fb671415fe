import sys

from taskrun.cli import main

sys.exit(main())
