#!/bin/bash
# compiled 1M/1,000: before (HEAD~ without _init_group) and after, interleaved by tree
cd /work/main
B=/tmp/before
PY=/work/main/.venv/bin/python
ONLY="=Lion;=MSGD;=Signum;=SignSGD"
echo "before start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
(cd $B && PYTHONPATH=$B/src $PY benchmarks/optim_step.py --compiled-only --only "$ONLY" --layouts small --threads 1 --repeats 7 --json /tmp/cb/before.json) > /tmp/cb/before.log 2>&1
echo "after start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY benchmarks/optim_step.py --compiled-only --only "$ONLY" --layouts small --threads 1 --repeats 7 --json /tmp/cb/after.json > /tmp/cb/after.log 2>&1
echo "done $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
