"""The docs resolve: every docs/*.md the code cites exists, every ``docs/ALGORITHMS.md §N`` names one of its
sections, every source path and ``rl.*`` / ``algorithms.*`` name the docs cite exists."""

from __future__ import annotations

import importlib
import re

from conftest import ROOT

CITING = [p for folder in ("src", "tests", "conf", "benchmarks", "experiments", "docs")
          for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md", ".sh")] + [ROOT / "README.md"]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def test_every_cited_doc_and_section_exists():
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "ALGORITHMS.md").read_text(), re.M))
    cited_docs, cited_sections = set(), set()
    for path in CITING:
        text = path.read_text(errors="replace")
        cited_docs.update(re.findall(r"docs/([A-Z_]+\.md)", text))
        cited_sections.update(re.findall(r"ALGORITHMS\.md (?:§|section )(\d+)", text))
    assert {"ALGORITHMS.md", "ADDING_AN_ALGORITHM.md", "METRICS.md", "RESUME.md"} <= cited_docs
    assert [doc for doc in sorted(cited_docs) if not (ROOT / "docs" / doc).exists()] == []
    assert sorted(cited_sections - sections) == [] and {"0", "1", "2", "3", "4"} <= cited_sections


def test_every_path_and_core_name_the_docs_cite_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        # a path of this repository (not a user's myproject/conf/..., not a pattern such as repo_<model>.yaml)
        for path in set(re.findall(r"(?<![\w/])((?:src|conf|tests|benchmarks|experiments)/[\w/.-]*\w)(?![\w<])", text)):
            if not (ROOT / path).exists() and not list(ROOT.glob(path)):
                missing.append(f"{doc.name}: {path}")
        for module, name in set(re.findall(r"`(?:alignbench\.)?((?:rl|algorithms|signals)\.\w+)\.(\w+)", text)):
            try:
                if not hasattr(importlib.import_module(f"alignbench.{module}"), name):
                    missing.append(f"{doc.name}: alignbench.{module}.{name}")
            except ImportError:
                missing.append(f"{doc.name}: alignbench.{module}")
    assert missing == []
