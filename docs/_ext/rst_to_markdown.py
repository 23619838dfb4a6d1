"""Griffe extension: render the reStructuredText bits of our Google-style docstrings as Markdown.

The docstrings in ``src/`` are Google style with a few reST constructs that read well in a
terminal (``help()``) and in Sphinx: ``.. math::`` blocks, ``.. code-block::`` blocks and the
roles ``:math:``, ``:func:``, ``:class:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
``:obj:``, ``:exc:``. mkdocstrings renders docstrings as Markdown, so this extension rewrites
them before parsing:

* ``.. math::`` + indented body  ->  a ``$$ ... $$`` block (pymdownx.arithmatex);
* ``:math:`x```                  ->  ``$x$``;
* ``.. code-block:: lang``       ->  a fenced code block;
* an ``Example:`` section        ->  ``Examples:``, which griffe renders as code (``>>>`` lines);
* ``:func:`~pkg.mod.name```      ->  a cross-reference ``[`name`][pkg.mod.name]`` when the target is
  a public class, function or attribute of the documented package (every path component
  public), else inline code (modules, ``torch.quantile``, private helpers, names relative to
  the current object).

Configured in ``mkdocs.yml`` under the python handler's ``extensions``; the source files are
never changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Alias, Extension, GriffeLoader, Object

_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<name>math|code-block|code)::[ \t]*(?P<arg>\S*)[ \t]*$")
_EXAMPLE_HEADER = re.compile(r"^([ \t]*)Example:[ \t]*$", flags=re.M)
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _convert_directives(text: str) -> str:
    """Turn ``.. math::`` and ``.. code-block::`` blocks into Markdown blocks at the directive's indentation."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        base = len(indent)
        i += 1
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():  # trailing blank lines belong to the text after the block
            body.pop()
            i -= 1
        while body and not body[0].strip():
            body.pop(0)
        shift = min((_indent_of(line) for line in body if line.strip()), default=0)
        content = [indent + line[shift:] if line.strip() else "" for line in body]
        if out and out[-1].strip():
            out.append("")
        if match["name"] == "math":
            out += [indent + "$$", *content, indent + "$$"]
        else:
            out += [indent + "```" + match["arg"], *content, indent + "```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


class RstToMarkdown(Extension):
    """Rewrite reST math, code blocks and cross-reference roles of every docstring as Markdown."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._loader: GriffeLoader | None = None

    def on_object(self, *, obj: Object, loader: GriffeLoader, **kwargs: Any) -> None:
        """Convert the object's docstring (runs once the object tree is complete)."""
        self._loader = loader
        if obj.docstring is None:
            return
        obj.docstring.value = self.convert(obj.docstring.value)
        obj.docstring.__dict__.pop("parsed", None)  # drop a cached parse of the old text

    def on_alias(self, *, alias: Alias, loader: GriffeLoader, **kwargs: Any) -> None:
        """Aliases share their target's docstring: nothing to do."""

    def convert(self, text: str) -> str:
        """The Markdown form of one docstring."""
        text = _EXAMPLE_HEADER.sub(r"\1Examples:", text)  # Google's singular form; griffe parses "Examples"
        text = _convert_directives(text)
        text = _MATH_ROLE.sub(lambda m: f"${m[1].strip()}$", text)
        return _XREF_ROLE.sub(self._xref, text)

    def _xref(self, match: re.Match[str]) -> str:
        target = match["target"].strip()
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        if self._links_to(target):
            return f"[`{shown}`][{target}]"
        return f"`{shown}`"

    def _links_to(self, target: str) -> bool:
        """Whether ``target`` is a public non-module object of a loaded package (the reference renders those)."""
        if self._loader is None or any(part.startswith("_") for part in target.split(".")):
            return False
        try:
            found = self._loader.modules_collection[target]
        except (KeyError, ValueError, AttributeError):
            return False
        try:  # modules are not linked: the site documents their members, not every module page
            return bool(found.is_public) and not found.is_module
        except Exception:  # an alias that does not resolve
            return False
