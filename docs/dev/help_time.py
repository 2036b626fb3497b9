"""Wall and CPU time (user + sys) of `mindscope --help` for two checkouts, interleaved
(docs/first-hour.md). CPU time is what an idle machine's wall time approaches; on a shared
machine wall time mostly measures the queue.

    python docs/dev/help_time.py BEFORE_SRC AFTER_SRC [RUNS]
"""
import os
import resource
import statistics
import subprocess
import sys
import time

mindscope = os.path.join(os.path.dirname(sys.executable), "mindscope")
srcs, runs = sys.argv[1:3], int(sys.argv[3]) if len(sys.argv) > 3 else 7
wall: dict = {s: [] for s in srcs}
cpu: dict = {s: [] for s in srcs}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


for _ in range(runs):
    for s in srcs:
        t, c = time.perf_counter(), children_cpu()
        subprocess.run([mindscope, "--help"], env=dict(os.environ, PYTHONPATH=s),
                       stdout=subprocess.DEVNULL, check=True)
        wall[s].append(time.perf_counter() - t)
        cpu[s].append(children_cpu() - c)
for s in srcs:
    print(f"{s}: wall median {statistics.median(wall[s]):.2f} s ({min(wall[s]):.2f}-"
          f"{max(wall[s]):.2f}), cpu median {statistics.median(cpu[s]):.2f} s "
          f"({min(cpu[s]):.2f}-{max(cpu[s]):.2f})")
print("load average", os.getloadavg())
