"""The fused column of every optimizer now (``now-{0,1}.json``) beside the same command's run on
``7349e45`` (``docs/results/fused/final/fnow-{0,1}.json``): ``python tables.py`` (run in this
folder) prints the tables of docs/performance.md ("The layers around a compiled kernel, and
columns")."""

from __future__ import annotations

import os
import sys

# load, values, span: as the tables of "Before and after issue 18" (one definition)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../fused/final"))
from before_after import load, names_of, row

EARLIER = "../../../fused/final/fnow-{}.json"


def main() -> None:
    earlier = [load(EARLIER.format(i)) for i in (0, 1)]
    now = [load(f"now-{i}.json") for i in (0, 1)]
    for layout, title in (("big", "10M parameters in 100 tensors"), ("small", "1M parameters in 1,000 tensors")):
        print(f'\n**{title}** (x SGD-momentum per byte, default check / `"ignore"`; earlier = `7349e45`):\n')
        print("| optimizer | loop now | foreach now | fused earlier | fused now | fused now x foreach AdamW |")
        print("| --- | --- | --- | --- | --- | --- |")
        columns = [(now, "loop"), (now, "foreach"), (earlier, "fused"), (now, "fused")]
        for name in names_of(now, layout):
            print(row(name, layout, columns, now))


if __name__ == "__main__":
    main()
