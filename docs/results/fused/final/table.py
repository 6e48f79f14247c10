import json,sys,statistics as st
def load(f): return json.load(open(f))['rows']
def table(files, layout, paths, adamw=True):
    runs=[load(f) for f in files]
    opts=[]
    for r in runs[0]:
        if r['layout']==layout and r['optimizer'] not in opts and 'torch' not in r['optimizer']: opts.append(r['optimizer'])
    def cell(o,p,g,key='x_sgd_per_byte'):
        v=[r[key] for run in runs for r in run if r['layout']==layout and r['optimizer']==o and r['path']==p and r['nonfinite']==g]
        if not v or v[0] is None: return None
        return v
    hdr="| optimizer | "+" | ".join(paths)+(" | fused x foreach AdamW |" if adamw else " |")
    print(hdr); print("|"+" --- |"*(len(paths)+1+(1 if adamw else 0)))
    for o in opts:
        cells=[]
        for p in paths:
            d=cell(o,p,'default'); i=cell(o,p,'ignore')
            f=lambda v: "-" if not v else (f"{min(v):.2f}" if max(v)-min(v)<0.005 else f"{min(v):.2f}-{max(v):.2f}")
            cells.append(f"{f(d)} / {f(i)}")
        if adamw:
            a=cell(o,'fused','default','x_adamw_foreach_per_byte')
            cells.append("-" if not a else f"{min(a):.2f}-{max(a):.2f}")
        print(f"| {o} | "+" | ".join(cells)+" |")
if __name__=="__main__":
    kind=sys.argv[1]; files=sys.argv[2:]
    for lay in ("big","small"):
        print(f"\n**{lay}**\n")
        if kind=="now": table(files, lay, ["loop","foreach","fused"])
        else: table(files, lay, ["loop","foreach"], adamw=False)
