import sys

from qr_ds.cli import main

sys.exit(main())
