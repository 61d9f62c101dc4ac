import sys

from medfuse.cli import main

sys.exit(main())
