"""MkDocs hook: every citation key in a page, ``[BPL20]`` or ``[BPL20, Eq. 11]``, links to its
entry on the references page (docs/references.md, where each entry carries the key as its id).

It runs on the rendered HTML (``on_page_content``), so it also links the citations inside the
docstrings that mkdocstrings renders into the API reference. Text inside ``<code>``, ``<pre>``
and existing links is left alone. It also drops the reStructuredText roles the docstrings use
(``:class:`~steepest.norms.Lp``` renders as ``Lp`` in code, as Sphinx would show it), which
Markdown would otherwise print literally. Registered in mkdocs.yml under ``hooks:``.
"""

from __future__ import annotations

import re
from typing import Any

# The keys of docs/references.md (a key missing here is simply not linked).
KEYS = (
    "BPL20-TLDR", "BPL20", "Bal21", "STACEY", "ScaledSign", "Jordan24", "BN24", "Large24",
    "Liu25", "Pethick25", "Chen23", "KB15", "LH19", "Bernstein18", "Bernstein19",
    "Karimireddy19", "KBH19", "AO17", "Rohn00", "Byrd12", "De17", "DKH20",
)
_CITE = re.compile(r"\[(" + "|".join(re.escape(k) for k in KEYS) + r")((?:[,;] [^\[\]<>]*)?)\]")
_TAG = re.compile(r"(<[^>]+>)")
_SKIP = ("code", "pre", "a", "script", "style")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):<code>(~?)([^<]*)</code>")


def _role(m: re.Match[str]) -> str:
    name = m.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if m.group(1) else name}</code>"


def _link(text: str, prefix: str) -> str:
    return _CITE.sub(lambda m: f'<a class="citation" href="{prefix}#{m.group(1)}">{m.group(0)}</a>', text)


def on_page_content(html: str, page: Any, **_: Any) -> str:
    url = page.url or ""
    prefix = "" if url.rstrip("/") == "references" else "../" * url.count("/") + "references/"
    depth = dict.fromkeys(_SKIP, 0)
    out = []
    for part in _TAG.split(html):
        if part.startswith("<"):
            m = re.match(r"<(/?)([a-zA-Z0-9]+)", part)
            if m and m.group(2).lower() in depth and not part.endswith("/>"):
                depth[m.group(2).lower()] += -1 if m.group(1) else 1
            out.append(part)
        elif part and not any(depth.values()):
            out.append(_link(part, prefix))
        else:
            out.append(part)
    return _ROLE.sub(_role, "".join(out))
