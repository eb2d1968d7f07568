"""A griffe extension for the API reference (mkdocs.yml): Sphinx roles in docstrings as code.

The docstrings cite other objects the Sphinx way (``:func:`logit_lens```, ``:class:`~x.Y```),
which Markdown would show verbatim. This rewrites each role to inline code of its target
(``~`` keeps the last dotted component, as in Sphinx) before mkdocstrings renders the docstring.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|obj|data|exc|const):`(~?)([^`]+)`")


def roles_to_code(text: str) -> str:
    """``:meth:`~a.b.c``` -> ```c```, ``:func:`a.b``` -> ```a.b```."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


class SphinxRolesAsCode(Extension):
    """Rewrite the Sphinx roles of every docstring that griffe loads."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = roles_to_code(obj.docstring.value)
