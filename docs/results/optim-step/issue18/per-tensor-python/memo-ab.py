import statistics
import time

import torch

import steepest
from steepest.backend import fused as F

torch.set_num_threads(1)
ps = [torch.nn.Parameter(torch.randn(1000)) for _ in range(1000)]
for p in ps:
    p.grad = torch.randn(1000)
opts = {
    "BN": steepest.BlockNormalizedSGD(ps, lr=1e-3, fused=True),
    "Scaled": steepest.ScaledSignSGD(ps, lr=1e-9, fused=True),
    "EF-pt": steepest.EFSignSGD(ps, lr=1e-3, fused=True, scope="per_tensor"),
    "SignSGD": steepest.SignSGD(ps, lr=1e-3, fused=True),
}
new_run = F.FusedBackend.run


def old_run(self, optimizer, group, params, grads, states):
    optimizer._fused_run(group, params, grads, states, self)


for o in opts.values():
    for _ in range(3):
        o.step()
res = {}
for r in range(40):
    for name, o in opts.items():
        for mode, fn in (
            (("memo", new_run), ("no memo", old_run))
            if r % 2
            else (("no memo", old_run), ("memo", new_run))
        ):
            F.FusedBackend.run = fn
            t = time.perf_counter()
            for _ in range(5):
                o.step()
            res.setdefault((name, mode), []).append((time.perf_counter() - t) / 5)
for name in opts:
    a, b = (statistics.median(res[name, m]) * 1e3 for m in ("no memo", "memo"))
    print(f"{name:8s} no memo {a:.2f} ms  memo {b:.2f} ms  ratio {b / a:.3f}")
