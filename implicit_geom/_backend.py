"""Select geomstats' pytorch backend before geomstats is imported.

geomstats reads ``GEOMSTATS_BACKEND`` once, at its first import, and cannot switch
afterwards; everything in implicit_geom computes with torch (autograd Jacobians,
batched Newton), so a process that already imported geomstats on another backend
cannot use us and must be told so clearly.
"""

import os
import sys

from .exceptions import BackendError

_REQUIRED = "pytorch"


def ensure_pytorch_backend():
    """Make sure geomstats runs (or will run) on the pytorch backend.

    Raises
    ------
    BackendError
        If geomstats was already imported with another backend, or the
        environment asks for another backend explicitly.
    """
    if "geomstats.backend" in sys.modules:
        import geomstats.backend as gs

        name = getattr(gs, "__name__", "")
        if not name.endswith(_REQUIRED):
            raise BackendError(
                f"geomstats was already imported with the '{name.rsplit('.', 1)[-1]}' "
                "backend; implicit_geom needs the pytorch backend. Set "
                "GEOMSTATS_BACKEND=pytorch before importing geomstats (or import "
                "implicit_geom first)."
            )
        return
    requested = os.environ.get("GEOMSTATS_BACKEND")
    if requested is not None and requested != _REQUIRED:
        raise BackendError(
            f"GEOMSTATS_BACKEND={requested!r} but implicit_geom needs 'pytorch'; "
            "unset it or set GEOMSTATS_BACKEND=pytorch."
        )
    os.environ["GEOMSTATS_BACKEND"] = _REQUIRED
