"""benchmarks/RESULTS.md says what benchmarks/stats.py decides from the committed CSVs.

RESULTS.md is generated, but it is committed: a change to a claim, to the statistics or
to the CSVs that was not followed by ``python -m benchmarks report`` would leave words on
the page that the numbers no longer support. These tests read the page as a reader does.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.records import read_suite
from benchmarks.report import METRIC_NAMES
from benchmarks.stats import assess
from benchmarks.tables import TABLES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
CSVS = REPO / "benchmarks" / "results" / "tiny"


def _verdict_rows() -> dict[tuple[str, str, str], dict[str, str]]:
    """The rows of RESULTS.md's verdicts table, by (table, claim, probe)."""
    text = RESULTS.read_text()
    section = text[text.index("## Verdicts"):text.index("## Tables")]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        row = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        rows[(row["table"], row["claim"], row["probe"])] = row
    return rows


def test_every_verdict_and_its_reading_against_the_paper_are_the_statistics():
    findings = assess(read_suite(CSVS))
    rows = _verdict_rows()
    assert len(rows) == len(findings), "RESULTS.md lists other comparisons than the CSVs give"
    for f in findings:
        key = (TABLES[f.table].title.split(":")[0], f.claim.text,
               METRIC_NAMES.get(f.metric, f.metric))
        assert key in rows, f"RESULTS.md has no row for {key}"
        assert rows[key]["verdict"] == f"**{f.verdict}**", key
        assert rows[key]["the paper's claim"] == f.against_paper, key


def test_the_rule_counts_the_comparisons_the_page_lists():
    stated = re.search(r"Holm's method across all (\d+) comparisons", RESULTS.read_text())
    assert stated is not None and int(stated[1]) == len(_verdict_rows())


def test_a_comparison_that_is_not_the_paper_s_says_nothing_about_the_paper():
    rows = _verdict_rows().values()
    beyond = [r for r in rows if r["the paper's claim"] == "no claim in the paper"]
    assert {r["claim"] for r in beyond} >= {
        "sphere targets of R^32 beat one-hot targets of R^10 (d differs too)",
        "the two exact solvers give the same features",
        "greedy assignment gives features on par with the exact Hungarian",
        "Sinkhorn assignment gives features on par with the exact Hungarian"}
    assert all(not r["the paper's claim"].startswith(("reproduced", "not reproduced",
                                                      "contradicted"))
               for r in beyond)


def test_a_renamed_table_replaces_its_section_instead_of_adding_one():
    from benchmarks.results_page import replace_table_section

    page = ("# results\n\n### Old title (NAT, transfer)\n\nold rows\n\n"
            "![Old title](results/tiny/targets.png)\n\n### Speed: the assignment solvers and "
            "the cost of NAT\n\nspeed\n")
    section = "### New title (NAT)\n\nnew rows\n\n![New title](results/tiny/targets.png)\n"
    out = replace_table_section(page, "New title (NAT)", section)
    assert "Old title" not in out and "old rows" not in out
    assert out.count("results/tiny/targets.png") == 1 and "new rows" in out
    assert out.index("new rows") < out.index("### Speed")
    # a table that is not on the page yet still goes before the speed section
    other = "### Solver\n\nrows\n\n![Solver](results/tiny/solver.png)\n"
    added = replace_table_section(out, "Solver", other)
    assert added.index("### Solver") < added.index("### Speed") and "new rows" in added
