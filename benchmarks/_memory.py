"""Peak memory of a benchmark's child process (shared by the benchmarks that measure it)."""
from __future__ import annotations

import resource


def peak_rss_kb() -> int:
    """This process image's peak resident memory in KiB: Linux's ``VmHWM``, which starts afresh
    at ``exec`` (``ru_maxrss`` keeps the high-water mark of the process that forked it, so a
    child of a large benchmark process would report at least its parent's size)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
