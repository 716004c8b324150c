"""`dvc plots show` renders with no network: vega is inlined by the project's HTML template."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from components.evaluation.table import plot_frame

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def plots_project(tmp_path):
    """A DVC project with the repository's plot definition, template and a results table."""
    project = tmp_path / "project"
    (project / "dvc_plots").mkdir(parents=True)
    shutil.copy(REPO / "dvc_plots" / "offline_template.html", project / "dvc_plots")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    subprocess.run(["dvc", "config", "plots.html_template", "../dvc_plots/offline_template.html"],
                   cwd=project, check=True)
    frame = pd.DataFrame({"split": ["test"] * 3 + ["train"],
                          "query set": ["all", "all", "s", "all"],
                          "queries": [300, 300, 100, 809],
                          "system": ["BM25", "Dense", "BM25", "BM25"],
                          "nDCG@10": [0.68, 0.65, 0.73, 0.9]})
    plot_frame(frame, "test", "ndcg_cut_10").to_csv(project / "plot.csv", index=False)
    (project / "dvc.yaml").write_text(
        "plots:\n  - plot.csv:\n      template: bar_horizontal\n      x: nDCG@10\n      y: row\n")
    return project


def test_plot_rows_never_stack_and_skip_other_splits(plots_project):
    rows = pd.read_csv(plots_project / "plot.csv")
    assert rows["row"].is_unique and len(rows) == 3
    assert "BM25 · s (100 q)" in set(rows["row"])


def test_dvc_plots_show_inlines_vega_and_loads_nothing_remote(plots_project):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["dvc", "plots", "show", "-q", "-o", "out"], cwd=plots_project, check=True,
                   env=env, capture_output=True)
    html = (plots_project / "out" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html), "the page loads a script from elsewhere"
    assert "vegaEmbed" in html and "all (300 q)" in html


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_page_renders_a_chart_in_headless_chromium_offline(plots_project, tmp_path):
    screenshot = tmp_path / "plots.png"
    subprocess.run(["bash", str(REPO / "scripts" / "render_offline_plots.sh"), str(screenshot)],
                   env={**os.environ, "PLOTS_PROJECT": str(plots_project)}, check=True,
                   timeout=120)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
