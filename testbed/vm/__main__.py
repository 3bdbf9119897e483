"""``python -m testbed.vm``: the kernel matrix's command line (cli.main)."""

import sys

from testbed.vm.cli import main

sys.exit(main())
