"""MkDocs hook of the documentation site (mkdocs.yml ``hooks``).

The docstrings name objects with Sphinx roles (``:func:`solve```); Markdown renders the role as
text before the code span. Drop the role and keep the code span.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("", html)
