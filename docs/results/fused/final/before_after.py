import json
def load(f): return json.load(open(f))['rows']
pre=[load(f'fpre18-{i}.json') for i in (0,1)]; now=[load(f'fnow-{i}.json') for i in (0,1)]
def v(runs,lay,o,p,g,key='x_sgd_per_byte'):
    return [r[key] for run in runs for r in run if r['layout']==lay and r['optimizer']==o and r['path']==p and r['nonfinite']==g and r.get(key) is not None]
def f(x):
    if not x: return "-"
    return f"{min(x):.2f}" if max(x)-min(x)<0.005 else f"{min(x):.2f}-{max(x):.2f}"
for lay,title in (("big","10M parameters in 100 tensors"),("small","1M parameters in 1,000 tensors")):
    print(f"\n**{title}** (default check / `\"ignore\"`; before = `324d8c2`, after = `7349e45`):\n")
    print("| optimizer | loop before | loop after | foreach before | foreach after | fused after | fused x foreach AdamW |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    opts=[]
    for r in now[0]:
        if r['layout']==lay and 'torch' not in r['optimizer'] and r['optimizer'] not in opts: opts.append(r['optimizer'])
    for o in opts:
        c=[]
        for runs,p in ((pre,'loop'),(now,'loop'),(pre,'foreach'),(now,'foreach'),(now,'fused')):
            d=v(runs,lay,o,p,'default'); i=v(runs,lay,o,p,'ignore')
            c.append("-" if not d and not i else f"{f(d)} / {f(i)}")
        c.append(f(v(now,lay,o,'fused','default','x_adamw_foreach_per_byte')))
        print(f"| {o} | "+" | ".join(c)+" |")
