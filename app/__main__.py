import sys

from trapkit.app.cli import main

sys.exit(main())
