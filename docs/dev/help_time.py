"""Wall time of `mindscope --help` for two checkouts, interleaved (docs/first-hour.md).

    python docs/dev/help_time.py BEFORE_SRC AFTER_SRC [RUNS]
"""
import os
import statistics
import subprocess
import sys
import time

mindscope = os.path.join(os.path.dirname(sys.executable), "mindscope")
srcs, runs = sys.argv[1:3], int(sys.argv[3]) if len(sys.argv) > 3 else 7
res: dict = {s: [] for s in srcs}
for _ in range(runs):
    for s in srcs:
        t = time.perf_counter()
        subprocess.run([mindscope, "--help"], env=dict(os.environ, PYTHONPATH=s),
                       stdout=subprocess.DEVNULL, check=True)
        res[s].append(time.perf_counter() - t)
for s, v in res.items():
    print(f"{s}: median {statistics.median(v):.2f} s (min {min(v):.2f}, max {max(v):.2f})")
print("load average", os.getloadavg())
