#!/bin/bash
cd /work/wt/ctrlc
while ! grep -q DONE logs/audit_control.log; do sleep 5; done
mv runs/controls/audit runs/controls/audit-v1
for i in 1 2 3 4; do
  date -u
  PYTHONPATH=/work/wt/ctrlc/src /work/wt/heavy timeout 840 /work/main/.venv/bin/python -m mindscope.experiments.audit_control runs/organism -o runs/controls/audit --seeds 0 1 2 --budget 12 && break
done
date -u; echo DONE
