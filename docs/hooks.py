"""MkDocs hooks: the parameters reference, generated from the config schema, and the results page's benchmark
tables, included from bench/results/."""

import re
from pathlib import Path

from mkdocs.structure.files import File

from project.params_reference import markdown as parameters_reference

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "reference/parameters.md"
INCLUDE = re.compile(r"<!-- include (bench/results/[\w.-]+\.md) -->")


def on_files(files, config):
    files.append(File.generated(config, REFERENCE, content=parameters_reference()))
    return files


def demoted(text: str) -> str:
    """A results file under the page's "Benchmark results" heading: each of its headings two levels down (lines in
    fenced code are not headings)."""
    lines, fenced = [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        lines.append(re.sub(r"^(#+) ", r"##\1 ", line) if not fenced else line)
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown, page, config, files):
    return INCLUDE.sub(lambda found: demoted((ROOT / found.group(1)).read_text()), markdown)
