import sys

from jlservice.cli import main

sys.exit(main())
