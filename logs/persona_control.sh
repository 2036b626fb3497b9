#!/bin/bash
# resumable: each heavy call at most 14 min; completed runs are reused
cd /work/wt/ctrlc
for i in 1 2 3 4 5 6; do
  date -u
  PYTHONPATH=/work/wt/ctrlc/src /work/wt/heavy timeout 840 /work/main/.venv/bin/python -m mindscope.experiments.controls persona --quick --seeds 0 1 2 --strengths 0.5 1 -o runs/controls/persona && break
done
date -u; echo DONE
