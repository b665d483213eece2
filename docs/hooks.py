"""MkDocs hooks: the parameters reference, generated from the config schema, and the results page's benchmark
tables, included from bench/results/ or summarised from the benchmark's JSON."""

import json
import re
import statistics
from pathlib import Path

from mkdocs.structure.files import File

from project.params_reference import markdown as parameters_reference

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "reference/parameters.md"
INCLUDE = re.compile(r"<!-- include (bench/results/[\w.-]+\.md) -->")
EXPECT = re.compile(r"<!-- expect (bench/results/[\w.-]+\.json) -->")
EXPECTED_MODELS = {  # the bench's name: how the table names it
    "ensemble": "ensemble",
    "best_teacher": "its best teacher (on validation)",
    "student_alone": "student alone",
    "student_kd": "student distilled",
    "pruned_alone": "pruned architecture alone",
    "pruned": "pruned, distilled",
    "int8": "int8 (QAT)",
    "shipped": "**shipped**",
}


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


def expected(result: dict) -> str:
    """Each model's accuracy on the test split and off it, the median over the benchmark's seeds, in a table."""
    summary = result["summary"]
    off_split = summary["off_split"]
    header = ["model", "test", *off_split, "corrupted (mean)"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, shown in EXPECTED_MODELS.items():
        cells = [f"{summary['models'][name]['accuracy']['median'] * 100:.1f}"]
        cells += [f"{statistics.median(found['accuracy'][name]['per_seed']) * 100:.1f}" for found in off_split.values()]
        cells.append(
            f"{summary['evaluated'][name]['corrupted_accuracy']['median'] * 100:.1f}"
            if name in summary["evaluated"]
            else ""
        )
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown, page, config, files):
    markdown = EXPECT.sub(lambda found: expected(json.loads((ROOT / found.group(1)).read_text())), markdown)
    return INCLUDE.sub(lambda found: demoted((ROOT / found.group(1)).read_text()), markdown)
