import sys

from dmemfs.cli import main

sys.exit(main())
