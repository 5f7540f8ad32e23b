import os
import sys

# `python -m` puts the working directory first on sys.path; from a checkout that exposes our
# top-level kernels/ folder as a package named `kernels`, which transformers probes for the hub's
# `kernels` package. Ours is installed as qr_ds.kernels, so drop the checkout root here.
if os.path.isfile(os.path.join(os.getcwd(), "kernels", "__init__.py")):
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.getcwd()]

from qr_ds.cli import main  # noqa: E402

sys.exit(main())
