import os
import sys

# One core means one core: no BLAS thread pool spinning next to the measured code (numpy's and
# filterpy's small matrix products gain nothing from threads). Set before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from bench.harness import main  # noqa: E402

sys.exit(main())
