"""The bundled datasets as shipped (data/raw, restored by `dvc pull`): counts, ids, qrels
consistency, and how the ESConv strategy and LIBERO tasks were constructed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from components.data import catalog
from components.data.beir import load_beir
from components.data.bundled import (
    ESCONV_STRATEGIES,
    build_esconv_strategy,
    build_robot_instructions,
    normalise_instruction,
    render_goal,
)
from components.settings import REPO_ROOT

RAW = REPO_ROOT / "data" / "raw"

# name -> (documents, queries, {split: (qrels rows, judged queries)})
EXPECTED = {
    "esconv-strategy": (8, 5760, {"dev": (2985, 2985), "test": (2775, 2775)}),
    "esconv-reply": (5760, 5760, {"dev": (2985, 2985), "test": (2775, 2775)}),
    "robot-instructions": (91, 112, {"train": (77, 74), "test": (38, 38)}),
    "trec-dl19-subset": (5000, 50, {"test": (4102, 43)}),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def bundled(request):
    path = RAW / request.param
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"{path} not in the workspace: run `dvc pull {path}.dvc`")
    return request.param, load_beir(path)


def test_counts_ids_and_qrels_consistency(bundled):
    name, dataset = bundled
    n_docs, n_queries, splits = EXPECTED[name]
    assert len(dataset.corpus) == n_docs and dataset.corpus["_id"].is_unique
    assert len(dataset.queries) == n_queries and dataset.queries["_id"].is_unique
    assert dataset.splits == sorted(splits)
    docs, queries = set(dataset.corpus["_id"]), set(dataset.queries["_id"])
    for split, (rows, judged) in splits.items():
        qrels = dataset.qrels_dict(split)
        assert (len(dataset.qrels[split]), len(qrels)) == (rows, judged), split
        assert set(qrels) <= queries
        assert {d for judged_docs in qrels.values() for d in judged_docs} <= docs
        assert all(max(grades.values()) >= 1 for grades in qrels.values())
    judged = [set(dataset.qrels_dict(s)) for s in splits]
    assert not set.intersection(*judged) if len(judged) > 1 else True  # splits are disjoint


def test_catalog_splits_exist(bundled):
    name, dataset = bundled
    spec = catalog.spec(name)
    assert spec.test_split in dataset.splits
    train = load_beir(RAW / spec.train_name) if spec.train_name else dataset
    assert spec.train_split in train.splits


def test_source_and_licence_shipped(bundled):
    name, _ = bundled
    source = (RAW / name / "SOURCE.md").read_text()
    assert "License" in source and "Counts" in source
    assert list((RAW / name).glob("LICENSE*")) or "MS MARCO terms" in source


def test_trec_dl19_grades():
    dataset = load_beir(RAW / "trec-dl19-subset")
    grades = Counter(dataset.qrels["test"]["score"])
    assert grades == {"1": 1601, "2": 1804, "3": 697}


def test_esconv_strategy_is_the_next_replys_strategy():
    """Independent check: the reply task's corpus tags each reply with its strategy."""
    strategy = load_beir(RAW / "esconv-strategy")
    replies = [json.loads(line) for line in open(RAW / "esconv-reply" / "corpus.jsonl")]
    tag = {r["_id"]: r["metadata"]["strategy"] for r in replies}
    ids = {name: doc_id for name, (doc_id, _) in ESCONV_STRATEGIES.items()}
    for split in ("dev", "test"):
        for qid, docs in strategy.qrels_dict(split).items():
            assert list(docs) == [ids[tag[f"{qid}-r"]]]


def test_robot_test_instructions_unseen_in_training():
    dataset = load_beir(RAW / "robot-instructions")
    text = dataset.queries_dict()
    train = {normalise_instruction(text[q]) for q in dataset.qrels_dict("train")}
    test = {normalise_instruction(text[q]) for q in dataset.qrels_dict("test")}
    assert test and not train & test


# --- construction, on small upstream-shaped fixtures ---------------------------------------

def _write_esconv(src: Path, windows: list[tuple[str, str, str]]) -> Path:
    """windows: (id, split, strategy) -> an upstream-shaped ESConv folder."""
    (src / "raw").mkdir(parents=True)
    (src / "raw" / "LICENSE.CC-BY-NC-4.0.txt").write_text("licence")
    (src / "SOURCE.md").write_text("# ESConv\nupstream")
    with open(src / "examples.jsonl", "w") as ex, open(src / "corpus.jsonl", "w") as co, \
            open(src / "queries.jsonl", "w") as qu:
        for wid, split, strategy in windows:
            ex.write(json.dumps({"id": wid, "split": split, "context": [], "response": "r",
                                 "strategy": strategy}) + "\n")
            co.write(json.dumps({"_id": f"{wid}-r", "title": "", "text": "r",
                                 "metadata": {"strategy": strategy, "split": split}}) + "\n")
            qu.write(json.dumps({"_id": wid, "text": f"seeker: context of {wid}"}) + "\n")
    return src


def test_esconv_strategy_task_construction(tmp_path):
    windows = [("dev-0", "dev", "Questions"), ("dev-1", "dev", "Other"),
               ("test-0", "test", "Self-disclosure"), ("test-1", "test", "Questions")]
    counts = build_esconv_strategy(_write_esconv(tmp_path / "src", windows), tmp_path / "out")
    dataset = load_beir(tmp_path / "out")
    corpus = dataset.corpus_dict()
    assert len(corpus) == 8 == len(set(ESCONV_STRATEGIES))
    assert corpus["self-disclosure"]["title"] == "Self-disclosure"
    assert all(len(doc["text"].split()) >= 10 for doc in corpus.values())  # real descriptions
    assert dataset.qrels_dict("dev") == {"dev-0": {"questions": 1}, "dev-1": {"other": 1}}
    assert dataset.qrels_dict("test") == {"test-0": {"self-disclosure": 1},
                                          "test-1": {"questions": 1}}
    assert dataset.queries_dict()["test-1"] == "seeker: context of test-1"
    assert counts["qrels/test"] == 2 and "CC BY-NC 4.0" in (tmp_path / "out/SOURCE.md").read_text()


def test_esconv_strategy_rejects_inconsistent_tags(tmp_path):
    src = _write_esconv(tmp_path / "src", [("dev-0", "dev", "Questions")])
    (src / "corpus.jsonl").write_text(json.dumps(
        {"_id": "dev-0-r", "text": "r", "metadata": {"strategy": "Other"}}) + "\n")
    with pytest.raises(ValueError, match="dev-0 differs"):
        build_esconv_strategy(src, tmp_path / "out")


def test_render_goal_reads_as_text():
    goal = "(:goal (And (Turnon flat_stove_1) (On moka_pot_1 flat_stove_1_cook_region)) )"
    assert render_goal(goal) == ("Goal state: the flat stove 1 is turned on and the moka pot 1 "
                                 "is on the cooking area of the flat stove 1.")
    assert "the back compartment of the desk caddy 1" in render_goal(
        "(:goal (And (In black_book_1 desk_caddy_1_back_contain_region)) )")
    assert "the living room table area left of the plate" in render_goal(
        "(:goal (And (On chocolate_pudding_1 living_room_table_plate_left_region)) )")


def test_robot_split_keeps_shared_instructions_in_train(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "SOURCE.md").write_text("# LIBERO")
    (src / "LICENSE.LIBERO.MIT.txt").write_text("MIT")
    tasks = [("libero_90", "turn on the stove", "(:goal (And (Turnon flat_stove_1)) )"),
             ("libero_goal", "Turn on the stove", "(:goal (And (Turnon flat_stove_1)) )"),
             ("libero_goal", "open the microwave", "(:goal (And (Open microwave_1)) )"),
             ("libero_10", "close the microwave", "(:goal (And (Close microwave_1)) )")]
    (src / "libero_tasks.jsonl").write_text("".join(
        json.dumps({"id": f"{s}/{i}", "suite": s, "scene": None, "instruction": i, "goal": g})
        + "\n" for s, i, g in tasks))
    build_robot_instructions(src, tmp_path / "out")
    dataset = load_beir(tmp_path / "out")
    text = dataset.queries_dict()
    assert sorted(text[q] for q in dataset.qrels_dict("train")) == ["turn on the stove"]
    assert sorted(text[q] for q in dataset.qrels_dict("test")) == ["close the microwave",
                                                                   "open the microwave"]
    assert len(dataset.corpus) == 3  # one document per distinct goal
