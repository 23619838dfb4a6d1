"""Every ```python block of README.md and of the pages under docs/ runs, unchanged.

One test case per page: its ```python blocks run in order, in one namespace (a fresh one per
page), in a temporary working directory, with torch seeded with 0 and limited to one thread
(the snippets use tiny tensors). A page states its claims in prose; the cheap ones are
asserted by hidden checks next to them.

Conventions, written as HTML comments in the Markdown (invisible on the rendered site):

``<!-- docs-test: check CODE -->``
    Python code (after ``check`` on the same line, or on the lines up to ``-->``) run right
    there in the page's namespace, after the blocks above it. It asserts what the prose
    claims, e.g. ``<!-- docs-test: check assert 0.0 <= loss.item() <= 1.0 -->``.

``<!-- docs-test: warns REGEX -->``
    The block above it warns, with a message matching REGEX (``re.search``). Every warning
    attributed to a line of the page (the library's warnings point at the caller's line)
    must be announced this way, and every announced warning must occur. Warnings raised
    elsewhere go to pytest as usual.

``<!-- docs-test: requires MODULE [MODULE ...] -->``
    Placed just before a ```python block that needs optional packages (e.g. ``lightning``).
    That block, with the checks and warns after it up to the next block, leaves the page's
    case for a case of its own, which first runs the page's other blocks above it and is
    skipped, with the reason, when a module does not import. Later blocks of the page must
    not depend on it.

``<!-- docs-test: skip REASON -->``
    Placed just before a ```python block that is never run (say why, e.g. it needs
    ``torchrun``); it gets a case of its own that reports the skip and the reason.

Any other ``docs-test:`` comment fails collection, so a typo cannot silently drop a check.
Only fences opened with exactly ```python run (```pycon, ```bash, ```text ... do not); a fence
indented inside an admonition or a tab runs too, dedented. Content that a page includes from
another file with ``--8<--`` (pymdownx.snippets) is not run here.
"""

from __future__ import annotations

import importlib
import os
import re
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_TOKEN = re.compile(
    r"<!--\s*docs-test:(?P<directive>.*?)-->"  # a directive comment
    r"|^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$",  # a ```python fence
    flags=re.S | re.M,
)


@dataclass
class Item:
    """A python block, a hidden check or an announced warning of a page."""

    kind: str  # "block", "check" or "warns"
    text: str  # code (block, check) or a regular expression (warns)
    line: int  # line of the page where the fence or the comment starts
    requires: list[str] = field(default_factory=list)
    skip: str | None = None


def parse(path: Path) -> list[Item]:
    """The items of a page, in order; a check or warns shares the gating of the block above it."""
    text = path.read_text(encoding="utf-8")
    items: list[Item] = []
    requires: list[str] = []
    skip: str | None = None
    for match in _TOKEN.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match["code"] is not None:
            code = textwrap.dedent(match["code"]) if match["indent"] else match["code"]
            items.append(Item("block", "\n" * line + code, line, requires, skip))
            requires, skip = [], None
            continue
        directive = re.match(r"\s*(\w*)[ \t]*(.*)", match["directive"], flags=re.S)
        assert directive is not None  # the pattern matches any string
        name, rest = directive[1], directive[2]
        gate = items[-1] if items else Item("block", "", 0)
        if name == "check" and rest.strip():
            # Pad so that tracebacks show the page's line numbers.
            items.append(Item("check", "\n" * (line - 1) + rest.rstrip(), line, gate.requires, gate.skip))
        elif name == "warns" and rest.strip():
            items.append(Item("warns", rest.strip(), line, gate.requires, gate.skip))
        elif name == "requires" and rest.strip():
            requires = rest.split()
        elif name == "skip" and rest.strip():
            skip = " ".join(rest.split())
        else:
            raise ValueError(f"{path.name}:{line}: unknown or incomplete docs-test directive {match[0]!r}")
    return items


def run(items: list[Item], path: Path) -> None:
    """Run the items in one namespace; check that the warnings at the page's lines were announced."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    expected = [re.compile(item.text) for item in items if item.kind == "warns"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for item in items:
            if item.kind != "warns":
                exec(compile(item.text, str(path), "exec"), namespace)
    ours = []
    for record in caught:
        if Path(record.filename) == path:
            ours.append(record)
        else:  # someone else's: through pytest's own filters and into its summary
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    unexpected = [f"line {r.lineno}: {r.message}" for r in ours if not any(p.search(str(r.message)) for p in expected)]
    missing = [p.pattern for p in expected if not any(p.search(str(r.message)) for r in ours)]
    assert not unexpected, f"{path.name}: warnings not announced with `docs-test: warns`: {unexpected}"
    assert not missing, f"{path.name}: announced warnings that did not occur: {missing}"


def _cases() -> list[object]:
    """One case per page, plus one per block that is optional (`requires`) or skipped."""
    cases: list[object] = []
    for path in PAGES:
        name = path.relative_to(ROOT).as_posix()
        cases.append(pytest.param(path, None, id=name))
        for index, item in enumerate(parse(path)):
            if item.kind == "block" and (item.requires or item.skip):
                tag = "+".join(item.requires) if item.requires else "skip"
                cases.append(pytest.param(path, index, id=f"{name}:{item.line}[{tag}]"))
    return cases


@pytest.fixture
def page_env(tmp_path: Path) -> Iterator[None]:
    """A scratch working directory, seed 0 and one thread; restores what it changed."""
    cwd, dtype, threads = os.getcwd(), torch.get_default_dtype(), torch.get_num_threads()
    os.chdir(tmp_path)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and immune to a busy machine
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("page_env")
@pytest.mark.parametrize(("path", "index"), _cases())
def test_snippets_run(path: Path, index: int | None) -> None:
    items = parse(path)
    if index is None:  # the page: every item that is neither optional nor skipped, in order
        run([item for item in items if not item.requires and item.skip is None], path)
        return
    block = items[index]
    if block.skip is not None:
        pytest.skip(f"{path.name}:{block.line}: {block.skip}")
    for module in block.requires:
        try:
            importlib.import_module(module)
        except ImportError as err:
            pytest.skip(f"{path.name}:{block.line} needs the optional module `{module}` ({err})")
    before = [item for item in items[:index] if not item.requires and item.skip is None]
    own = [block]
    for item in items[index + 1 :]:
        if item.kind == "block":
            break
        own.append(item)
    run(before + own, path)


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [path.relative_to(ROOT / "docs").as_posix() for path in PAGES[1:]]
    assert pages, "no page under docs/"
    missing = [page for page in pages if not re.search(rf":\s*{re.escape(page)}\s*$", nav, flags=re.M)]
    assert not missing, f"pages under docs/ that the nav of mkdocs.yml does not list: {missing}"
