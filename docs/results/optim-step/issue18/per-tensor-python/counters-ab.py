import statistics
import time

import torch

import steepest
from steepest.optim import updates as U

torch.set_num_threads(1)
ps = [torch.nn.Parameter(torch.randn(1000)) for _ in range(1000)]
for p in ps:
    p.grad = torch.randn(1000)
opt = steepest.MSGD(ps, lr=1e-3, fused=True, nonfinite="ignore")
new = U._counts


def old(states):
    out = []
    for st in states:
        st["step"].add_(1.0)
        out.append(float(st["step"]))
    return out


for _ in range(3):
    opt.step()
res = {"new": [], "old": []}
for _r in range(30):
    for k, f in (("new", new), ("old", old)):
        U._counts = f if k == "new" else old
        t = time.perf_counter()
        for _ in range(5):
            opt.step()
        res[k].append((time.perf_counter() - t) / 5)
for k, v in res.items():
    print(k, "%.2f ms" % (1e3 * statistics.median(v)))
