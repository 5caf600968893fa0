import sys

from moecheck.ci.cli import main

sys.exit(main())
