#!/bin/bash
cd /work/wt/ctrlc
date -u
PYTHONPATH=/work/wt/ctrlc/src /work/wt/heavy timeout 840 /work/main/.venv/bin/python -m mindscope.experiments.seeds persona --quick --seeds 2 --set n_questions=2 --set n_default_prompts=4 --set max_new_tokens=24 --set 'parts=["steering","jailbreak","capability"]' -o runs/trust/persona
date -u; echo DONE
