import statistics
import time

import torch

import steepest
from steepest.backend import fused as F
from steepest.optim import updates as U

torch.set_num_threads(1)
ps = [torch.nn.Parameter(torch.randn(1000)) for _ in range(1000)]
for p in ps:
    p.grad = torch.randn(1000)
opt = steepest.BlockNormalizedSGD(ps, lr=1e-3, fused=True)
for _ in range(3):
    opt.step()
acc = {}


def wrap(mod, name):
    f = getattr(mod, name)

    def w(*a, **k):
        t = time.perf_counter()
        r = f(*a, **k)
        acc.setdefault(name, []).append(time.perf_counter() - t)
        return r

    setattr(mod, name, w)


for n in ["_map", "_shared", "_checks", "_refuse_nonfinite", "update_is_finite", "fused_steepest"]:
    wrap(U if hasattr(U, n) else F, n)
wrap(F, "_uniform")
tot = []
for _ in range(100):
    t = time.perf_counter()
    opt.step()
    tot.append(time.perf_counter() - t)
print("step %.2f ms" % (1e3 * statistics.median(tot)))
for k, v in acc.items():
    per = len(v) // 100
    print(f"{k:20s} calls/step {per}  ms/step {1e3 * statistics.median(v) * per:.2f}")
