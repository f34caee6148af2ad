"""Benchmarks: run each with `.venv/bin/python -m bench.<name>`; results are JSON lines.

The daemon's command line (gateway/cli.py) runs numpy with one BLAS thread; benchmarks that embed the daemon
must do the same, or they measure multi-threaded BLAS stalls (hundreds of ms per caller-ID burst on a busy
2-core box) that the installed daemon never has. Set here, before any benchmark imports numpy.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
