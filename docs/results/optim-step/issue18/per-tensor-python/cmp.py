import json
import sys

names = sys.argv[1].split(",")
d = sys.argv[2] if len(sys.argv) > 2 else "/tmp/abrun"
runs = {k: json.load(open(f"{d}/{k}.json"))["rows"] for k in names}
keys, idx = [], {}
for k, rs in runs.items():
    for r in rs:
        key = (r["path"], r["optimizer"], r["nonfinite"])
        if key not in keys:
            keys.append(key)
        idx[(k,) + key] = r
print(f"{'path':8s} {'optimizer':36s} {'nf':8s} | x SGD/B {' '.join(names)} | x AdamW/B")
for key in keys:
    v = [idx.get((k,) + key) for k in runs]
    def f(r, c):
        return f"{r[c]:.2f}" if r and c in r else "-"
    print(
        f"{key[0]:8s} {key[1]:36s} {key[2]:8s} | {' '.join(f(x, 'x_sgd_per_byte') for x in v)} | {' '.join(f(x, 'x_adamw_foreach_per_byte') for x in v)}"
    )
