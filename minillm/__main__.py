import sys

from minillm.cli import console_main

sys.exit(console_main())
