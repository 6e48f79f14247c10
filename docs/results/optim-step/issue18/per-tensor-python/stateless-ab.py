import statistics
import sys
import time

import torch

import steepest
from steepest.optim.base import StepOptimizer

torch.set_num_threads(1)
ps = [torch.nn.Parameter(torch.randn(1000)) for _ in range(1000)]
for p in ps:
    p.grad = torch.randn(1000)
kw = dict(fused=True) if "fused" in sys.argv else dict(foreach=False)
opts = {
    "SignSGD": steepest.SignSGD(ps, lr=1e-3, **kw),
    "BN": steepest.BlockNormalizedSGD(ps, lr=1e-3, **kw),
}
orig = StepOptimizer._creates_state
res = {}
for _ in range(3):
    for o in opts.values():
        o.step()
for _r in range(40):
    for name, o in opts.items():
        for mode in ("new", "old"):
            if mode == "old":
                type(o)._creates_state = lambda self, g: True
            t = time.perf_counter()
            for _ in range(5):
                o.step()
            res.setdefault((name, mode), []).append((time.perf_counter() - t) / 5)
            if mode == "old":
                del type(o)._creates_state
for k, v in res.items():
    print(k, "median %.2f ms" % (statistics.median(v) * 1e3))
