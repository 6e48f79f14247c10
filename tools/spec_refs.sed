# Replace references to SPEC.md / DESIGN.md (design notes that are not in the repository) by
# what is: the citation keys of docs/references.md and the docs pages that now hold the
# decisions. Apply after cite_keys.sed:  sed -E -i -f tools/spec_refs.sed FILE...
# SPEC §7 = operator norms and per-layer geometry -> docs/operator_norms.md ([BN24], [Jordan24],
# [Liu25], [Pethick25]); SPEC Sec. 2 = STACEY's open choices -> docs/stacey.md; SPEC Sec. 5 =
# signSGD with majority vote -> [Bernstein18]; DESIGN.md -> docs/design.md.
s/\(SPEC §7\)/(docs\/operator_norms.md)/g
s/ \(SPEC §7: ([^()]*)\)/ (\1)/g
s/SPEC §7: //g
s/SPEC §7; //g
s/; SPEC §7\)/)/g
s/Scion; SPEC §7/Scion [Pethick25]/g
s/\(SPEC §7; /(/g
s/SPEC §7/docs\/operator_norms.md/g
s/; SPEC\.md Sec\. 2\)/; docs\/stacey.md)/g
s/, SPEC\.md Sec\. 2\)/; docs\/stacey.md)/g
s/\(SPEC\.md Sec\. 2; /(docs\/stacey.md; /g
s/\(SPEC\.md Sec\. 2\)/(docs\/stacey.md)/g
s/, SPEC\.md Sec\. 5\)/; [Bernstein18])/g
s/; SPEC\.md Sec\. 5\)/; [Bernstein18])/g
s/\(SPEC\.md\s*$/([Bernstein18]/g
s/\(SPEC\.md Sec\. 5\)/([Bernstein18])/g
s/SPEC\.md Sec\. 5/[Bernstein18]/g
s/\(DESIGN\.md\)/(docs\/design.md)/g
s/; DESIGN\.md\)/; docs\/design.md)/g
s/DESIGN\.md/docs\/design.md/g
# Author-year citations of papers that have keys (not the "Name et al., YEAR" form with a comma,
# which is how the papers themselves cite, inside quoted claims).
s/Liu et al\. 2025/[Liu25]/g
s/Pethick et al\. 2025/[Pethick25]/g
s/Chen et al\. 2023/[Chen23]/g
s/Karimireddy et al\. 2019/[Karimireddy19]/g
s/Bernstein & Newhouse 2024/[BN24]/g
