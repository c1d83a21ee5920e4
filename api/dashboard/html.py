"""Building HTML where everything is escaped unless it was built here.

Text from the database (identifiers, arguments, errors) can hold ``<script>``: every value
passed to :func:`el` is escaped, and only :class:`Markup` (made by these functions) is not.
"""

from __future__ import annotations

import html
from typing import Any

VOID = frozenset({"input", "meta", "link", "br", "hr"})


class Markup(str):
    """HTML that is already safe."""


def esc(value: Any) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def _attributes(attributes: dict[str, Any]) -> str:
    parts = []
    for name, value in attributes.items():
        if value is None or value is False:
            continue
        name = name.rstrip("_").replace("_", "-")  # class_ -> class, data_x -> data-x
        parts.append(f" {name}" if value is True else f' {name}="{esc(value)}"')
    return "".join(parts)


def el(tag: str, /, *children: Any, **attributes: Any) -> Markup:
    """``<tag attributes>children</tag>``; None children are left out."""
    opening = f"<{tag}{_attributes(attributes)}>"
    if tag in VOID:
        return Markup(opening)
    return Markup(opening + join(*children) + f"</{tag}>")


def join(*parts: Any) -> Markup:
    out = []
    for part in parts:
        if part is None:
            continue
        if isinstance(part, (list, tuple)):
            out.append(join(*part))
        else:
            out.append(esc(part))
    return Markup("".join(out))
