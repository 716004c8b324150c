
import pytest

from components.data.beir import DataFormatError, load_beir
from components.data.sampling import sample_query_ids
from tests.helpers import write_beir


def test_loads_good_folder_with_and_without_titles(tmp_path):
    dataset = load_beir(write_beir(tmp_path / "ds"))
    assert dataset.splits == ["test", "train"]
    corpus = dataset.corpus_dict()
    assert corpus["d3"]["title"] == ""  # missing/empty titles are fine
    assert dataset.qrels_dict("test") == {"q3": {"d5": 1}, "q4": {"d4": 2, "d2": 0}}
    assert dataset.queries_dict()["q1"].startswith("aspirin")


def test_title_field_may_be_absent(tmp_path):
    corpus = [{"_id": "x", "text": "no title here"}]
    dataset = load_beir(
        write_beir(tmp_path / "ds", corpus=corpus, qrels={"test": [("q1", "x", "1")]})
    )
    assert dataset.corpus_dict() == {"x": {"title": "", "text": "no title here"}}






def test_bad_tsv_row_and_all_problems_listed(tmp_path):
    root = write_beir(
        tmp_path / "ds",
        qrels={"test": [("q3", "d5", "1"), ("q4", "d4")], "train": [("q1", "d1", "1", "extra")]},
    )
    with pytest.raises(DataFormatError) as info:
        load_beir(root)
    message = str(info.value)
    assert "qrels/test.tsv:3: expected 3 tab-separated fields, found 2" in message
    assert "qrels/train.tsv:2: expected 3 tab-separated fields, found 4" in message


def test_missing_files_named(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_beir(tmp_path / "nope")


def test_query_sampling_is_seeded_and_sorted():
    ids = [str(i) for i in range(50)]
    first = sample_query_ids(ids, 10, seed=1)
    assert first == sample_query_ids(list(reversed(ids)), 10, seed=1)
    assert first == sorted(first) and len(set(first)) == 10
    assert sample_query_ids(ids, 10, seed=2) != first
    assert sample_query_ids(ids, 0, seed=1) == sorted(ids)
