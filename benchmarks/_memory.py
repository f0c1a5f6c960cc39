"""Peak host memory of a benchmark process, shared by the benchmark scripts (Linux; honest fallbacks elsewhere).

``ru_maxrss`` only grows, so a baseline taken after building the inputs already contains every temporary freed on
the way (a weight-sized one from ``randn(...).to(dtype)``) and the step peak measured over it comes out too low.
Linux lets a process reset its high-water mark (``/proc/self/clear_refs`` ← 5, then ``VmHWM``); where it does not,
:func:`reset_peak_rss` says so and the peak is the lifetime maximum (an upper bound on the step's peak).
"""

from __future__ import annotations

import os
import resource


def rss_bytes() -> int:
    """Resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """RSS high-water mark since the last :func:`reset_peak_rss` (``VmHWM``; else the lifetime ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
