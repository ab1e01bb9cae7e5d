import sys

from lab2.cli import main

sys.exit(main())
