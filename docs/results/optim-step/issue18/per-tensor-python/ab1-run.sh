#!/bin/bash
cd /work/main
for r in 1 2 3; do
for v in base new; do
  if [ $v = base ]; then src=/tmp/base/src; else src=/work/main/src; fi
  uptime > /tmp/abrun2/$v-r$r.load
  PYTHONPATH=$src .venv/bin/python benchmarks/optim_step.py --layouts small --threads 1 --repeats 15 --paths loop,foreach,fused --json /tmp/abrun2/$v-r$r.json > /tmp/abrun2/$v-r$r.txt 2>&1
done; done
echo finished > /tmp/abrun2/done
