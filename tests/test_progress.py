"""Progress bars show in a terminal and stay out of logs and CI."""

import io

from components import progress


def test_bars_follow_the_terminal_and_the_switches(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("RERANK_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe, as under the pipeline flow
    assert not progress.enabled()
    monkeypatch.setenv("RERANK_PROGRESS", "1")
    assert progress.enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled()


def test_a_bar_yields_every_item_and_draws_only_when_enabled(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("RERANK_PROGRESS", "1")
    assert list(progress.progress(range(5), "scoring")) == [0, 1, 2, 3, 4]
    assert "scoring" in stream.getvalue()
    monkeypatch.setenv("RERANK_PROGRESS", "0")
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)
    assert list(progress.progress(range(3), "scoring")) == [0, 1, 2]
    assert quiet.getvalue() == ""
