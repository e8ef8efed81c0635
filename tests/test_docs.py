"""Every page of the documentation parses without a markup error (docutils): a malformed
table or a short title underline renders wrong on GitHub and on PyPI, silently."""

from __future__ import annotations

import io
import pathlib

import pytest
from docutils import nodes
from docutils.core import publish_doctree
from docutils.parsers.rst import roles

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.rst", *ROOT.glob("docs/**/*.rst")])


def _sphinx_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    # Sphinx's cross-references (:doc:, :ref:) are not docutils': read as literal text
    return [nodes.literal(rawtext, text)], []


for _name in ("doc", "ref"):
    roles.register_local_role(_name, _sphinx_role)


def problems(text: str) -> list[str]:
    stream = io.StringIO()
    publish_doctree(
        text,
        settings_overrides={
            "report_level": 2,
            "halt_level": 5,
            "warning_stream": stream,
            "syntax_highlight": "none",
        },
    )
    return [
        line
        for line in stream.getvalue().splitlines()
        if "(WARNING/" in line or "(ERROR/" in line or "(SEVERE/" in line
    ]


def test_the_check_finds_a_malformed_table():
    table = "=====  =====\na      b\nlonger text  c\n=====  =====\n"
    assert problems(table)


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_page_parses_without_a_markup_problem(page):
    assert problems(page.read_text()) == []
