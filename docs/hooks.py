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
    """A results file under the page's "Benchmark results" heading: each of its headings two levels down."""
    return re.sub(r"(?m)^(#+) ", r"##\1 ", text)


def on_page_markdown(markdown, page, config, files):
    return INCLUDE.sub(lambda found: demoted((ROOT / found.group(1)).read_text()), markdown)
