"""Cost of the fault checks (issue 15): the memory guard's RSS sample and the storage watchdog's probe write.

    PYTHONPATH=. python bench/bench_faults.py [--dir DIR]

The memory guard samples ``/proc/self/statm`` every 50 ms in each worker; the watchdog writes, fsyncs and removes a
4 KiB file in the experiment directory every 2 s in the driver. Prints each cost and its share of one core.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import timeit

from search.watchdog import probe_write
from trainables.memory import rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="a directory on the storage to probe (default: here)")
    args = parser.parse_args()
    n = 20000
    sample_us = timeit.timeit(rss_mb, number=n) / n * 1e6
    d = tempfile.mkdtemp(dir=args.dir)
    try:
        probe_ms = timeit.timeit(lambda: probe_write(d), number=50) / 50 * 1e3
    finally:
        shutil.rmtree(d)
    print(f"memory guard: {sample_us:.1f} us per RSS sample, every 50 ms = {sample_us / 50e3 * 100:.3f} % of a core")
    print(f"storage probe: {probe_ms:.2f} ms per write+fsync+unlink, every 2 s = {probe_ms / 2e3 * 100:.2f} % of a core")


if __name__ == "__main__":
    main()
