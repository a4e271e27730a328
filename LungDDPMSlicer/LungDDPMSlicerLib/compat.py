"""Which Slicer and Python the module supports, checked when the module loads (before any newer syntax runs).

Supported: Slicer 5.10 and later, whose Python is 3.12; the engine needs Python 3.10 or later. Slicer 5.8
ships Python 3.9.10 and is refused with one message naming the versions and the fix. This file is written
for any Python 3 so that the check itself runs on an old Slicer.
"""

MIN_SLICER = (5, 10)
MIN_PYTHON = (3, 10)


def unsupported_reason(python_version, slicer_version):
    """Why this Slicer (major, minor) and Python version_info cannot run the module; '' when they can."""
    python = tuple(python_version[:2])
    slicer = tuple(slicer_version[:2])
    if slicer >= MIN_SLICER and python >= MIN_PYTHON:
        return ""
    return ("Lung DDPM needs 3D Slicer {ms} or later (Python {mp} or later); this is Slicer {s} with Python {p}. "
            "Install a current Slicer from https://download.slicer.org and add the extension there.").format(
                ms=".".join(map(str, MIN_SLICER)), mp=".".join(map(str, MIN_PYTHON)),
                s=".".join(map(str, slicer)), p=".".join(map(str, tuple(python_version[:3]))))


def require_supported(python_version, slicer_version):
    """Raise ImportError with unsupported_reason's message when this Slicer or Python is too old."""
    reason = unsupported_reason(python_version, slicer_version)
    if reason:
        raise ImportError(reason)
