"""Great Expectations suites for a BEIR dataset.

Each expectation carries `meta.rule` (a stable, readable rule name) and `meta.part`
(corpus, queries or a qrels split) so a failure can be reported as rule + file + lines.
Frames come from `components.data.beir` and keep a `_line` column for that purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from components.config import ValidateParams
from components.runs import ID_TOKEN  # one pattern for ids in the data and in run files

# At most 15 digits: a longer one (10^20, say) parses as an inexact float, not a grade.
INTEGER = r"^-?[0-9]{1,15}$"
NON_BLANK = r"\S"


@dataclass
class Check:
    """One frame to validate with its expectations."""

    name: str  # e.g. "corpus", "qrels/test", "split-overlap/test"
    part: str  # the data part whose file is reported: corpus, queries, or a split name
    frame: pd.DataFrame
    expectations: list


def _rule(expectation, rule: str, part: str, description: str):
    expectation.meta = {"rule": rule, "part": part, "description": description}
    return expectation


def text_checks(part: str, frame: pd.DataFrame, max_chars: int, min_rows: int, max_rows: int,
                max_id_chars: int, max_title_chars: int | None = None):
    noun = "document" if part == "corpus" else "query"
    titles = []
    if max_title_chars is not None:
        titles = [_rule(gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=0,
                                                                 max_value=max_title_chars),
                        f"{part}.title_length", part,
                        f"{noun} title has at most {max_title_chars} characters")]
    return Check(part, part, frame, [
        _rule(gxe.ExpectColumnValuesToNotBeNull(column="_id"), f"{part}.id_present", part,
              f"every {noun} has an `_id`"),
        _rule(gxe.ExpectColumnValuesToMatchRegex(column="_id", regex=ID_TOKEN),
              f"{part}.id_token", part,
              f"{noun} ids are non-empty and contain no whitespace or line breaks"),
        _rule(gxe.ExpectColumnValueLengthsToBeBetween(column="_id", min_value=1,
                                                      max_value=max_id_chars),
              f"{part}.id_length", part, f"{noun} ids have 1..{max_id_chars} characters"),
        _rule(gxe.ExpectColumnValuesToBeUnique(column="_id"), f"{part}.id_unique", part,
              f"{noun} ids are unique"),
        *titles,
        _rule(gxe.ExpectColumnValuesToNotBeNull(column="text"), f"{part}.text_present", part,
              f"every {noun} has a `text` field"),
        _rule(gxe.ExpectColumnValuesToMatchRegex(column="text", regex=NON_BLANK),
              f"{part}.text_non_empty", part, f"{noun} text is not empty or blank"),
        _rule(gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1,
                                                      max_value=max_chars),
              f"{part}.text_length", part, f"{noun} text has 1..{max_chars} characters"),
        _rule(gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows),
              f"{part}.row_count", part, f"{min_rows}..{max_rows} {noun} rows"),
    ])


def qrels_checks(split: str, qrels: pd.DataFrame, query_ids: list, doc_ids: list,
                 allowed_grades: list[int]):
    frame = qrels.copy()
    # Grades are parsed here (not by the loader) so that a non-integer is a rule failure.
    grades = pd.to_numeric(frame["score"].where(frame["score"].str.match(INTEGER)),
                           errors="coerce")
    frame["grade"] = grades.astype("Int64")
    return Check(f"qrels/{split}", split, frame, [
        _rule(gxe.ExpectColumnValuesToBeInSet(column="query-id", value_set=query_ids),
              f"qrels.{split}.query_exists", split, "every qrels row names an existing query"),
        _rule(gxe.ExpectColumnValuesToBeInSet(column="corpus-id", value_set=doc_ids),
              f"qrels.{split}.doc_exists", split, "every qrels row names an existing document"),
        _rule(gxe.ExpectColumnValuesToMatchRegex(column="score", regex=INTEGER),
              f"qrels.{split}.grade_integer", split,
              "relevance grades are integers of at most 15 digits"),
        _rule(gxe.ExpectColumnValuesToBeInSet(column="grade", value_set=allowed_grades),
              f"qrels.{split}.grade_allowed", split,
              f"relevance grades are in {sorted(allowed_grades)}"),
        _rule(gxe.ExpectCompoundColumnsToBeUnique(column_list=["query-id", "corpus-id"]),
              f"qrels.{split}.pair_unique", split, "each (query, document) pair is judged once"),
        _rule(gxe.ExpectTableRowCountToBeBetween(min_value=1), f"qrels.{split}.row_count",
              split, "the split has at least one judgement"),
    ])


def relevant_per_query_check(split: str, frame: pd.DataFrame) -> Check:
    """Every query evaluated on `split` needs at least one relevant (grade > 0) document."""
    graded = frame.assign(grade=pd.to_numeric(frame["score"], errors="coerce"))
    per_query = graded.groupby("query-id", sort=True).agg(
        max_grade=("grade", "max"), _line=("_line", "min")).reset_index()
    return Check(f"queries-with-relevant/{split}", split, per_query, [
        _rule(gxe.ExpectColumnValuesToBeBetween(column="max_grade", min_value=1),
              f"qrels.{split}.query_has_relevant_doc", split,
              "every evaluated query has at least one relevant document"),
    ])


def disjoint_splits_check(train_split: str, other_split: str, train: pd.DataFrame,
                          other: pd.DataFrame) -> Check:
    """Queries of `other_split` must not appear in the training split (no leakage)."""
    frame = other.drop_duplicates("query-id")[["query-id", "_line"]]
    train_ids = sorted(set(train["query-id"]))
    return Check(f"split-overlap/{other_split}", other_split, frame, [
        _rule(gxe.ExpectColumnValuesToNotBeInSet(column="query-id", value_set=train_ids),
              f"qrels.{other_split}.disjoint_from_{train_split}", other_split,
              f"{other_split} queries do not appear in {train_split}"),
    ])


# --- Particulars of the bundled datasets (keyed by folder name) ------------------------------

ESCONV_STRATEGY_IDS = ["affirmation-and-reassurance", "information", "other",
                       "providing-suggestions", "questions", "reflection-of-feelings",
                       "restatement-or-paraphrasing", "self-disclosure"]


def _relevant_per_query(frame: pd.DataFrame) -> pd.DataFrame:
    graded = frame.assign(grade=pd.to_numeric(frame["score"], errors="coerce"))
    relevant = graded[graded["grade"] > 0]
    return relevant.groupby("query-id", sort=True).agg(
        relevant=("corpus-id", "count"), _line=("_line", "min")).reset_index()


def exactly_one_relevant_check(split: str, frame: pd.DataFrame, noun: str) -> Check:
    return Check(f"one-relevant/{split}", split, _relevant_per_query(frame), [
        _rule(gxe.ExpectColumnValuesToBeBetween(column="relevant", min_value=1, max_value=1),
              f"qrels.{split}.one_{noun}_per_query", split,
              f"every query has exactly one relevant {noun}"),
    ])


def esconv_strategy_checks(dataset) -> list[Check]:
    checks = [Check("strategies", "corpus", dataset.corpus, [
        _rule(gxe.ExpectTableRowCountToEqual(value=len(ESCONV_STRATEGY_IDS)),
              "corpus.eight_strategies", "corpus", "the corpus is the 8 ESConv strategies"),
        _rule(gxe.ExpectColumnValuesToBeInSet(column="_id", value_set=ESCONV_STRATEGY_IDS),
              "corpus.strategy_ids", "corpus", "document ids are the 8 strategy ids"),
    ])]
    checks += [exactly_one_relevant_check(split, frame, "strategy")
               for split, frame in sorted(dataset.qrels.items())]
    return checks


def esconv_reply_checks(dataset) -> list[Check]:
    checks = []
    for split, frame in sorted(dataset.qrels.items()):
        checks.append(exactly_one_relevant_check(split, frame, "reply"))
        pairs = frame.assign(next_reply=frame["query-id"] + "-r")
        checks.append(Check(f"next-reply/{split}", split, pairs, [
            _rule(gxe.ExpectColumnPairValuesToBeEqual(column_A="corpus-id",
                                                      column_B="next_reply"),
                  f"qrels.{split}.relevant_is_next_reply", split,
                  "the relevant document of context <id> is its own next reply <id>-r"),
        ]))
    return checks


def robot_instructions_checks(dataset) -> list[Check]:
    """Test instructions are unseen in training: compared as text, not only by id."""
    if "train" not in dataset.qrels or "test" not in dataset.qrels:
        return []
    text = dict(zip(dataset.queries["_id"], dataset.queries["text"], strict=True))

    def normalised(qid):
        return " ".join(str(text.get(qid, "")).lower().split())

    train_texts = sorted({normalised(q) for q in dataset.qrels["train"]["query-id"]})
    test = dataset.qrels["test"].drop_duplicates("query-id")[["query-id", "_line"]]
    test = test.assign(instruction=[normalised(q) for q in test["query-id"]])
    return [Check("unseen-instructions/test", "test", test, [
        _rule(gxe.ExpectColumnValuesToNotBeInSet(column="instruction", value_set=train_texts),
              "qrels.test.instruction_unseen_in_train", "test",
              "no test instruction's text occurs among the training instructions"),
    ])]


def trec_dl19_checks(dataset) -> list[Check]:
    checks = []
    for split, frame in sorted(dataset.qrels.items()):
        checks.append(Check(f"graded/{split}", split, frame, [
            _rule(gxe.ExpectColumnValuesToBeInSet(column="score", value_set=["1", "2", "3"]),
                  f"qrels.{split}.grades_1_to_3", split,
                  "judged passages carry grades 1-3 (grade-0 passages are not bundled)"),
            _rule(gxe.ExpectColumnUniqueValueCountToBeBetween(column="score", min_value=3),
                  f"qrels.{split}.graded", split, "all three relevance grades occur"),
        ]))
    return checks


def binary_qrels_checks(dataset) -> list[Check]:
    return [Check(f"binary/{split}", split, frame, [
        _rule(gxe.ExpectColumnValuesToBeInSet(column="score", value_set=["1"]),
              f"qrels.{split}.binary", split, "SciFact judgements are binary (grade 1)"),
    ]) for split, frame in sorted(dataset.qrels.items())]


PARTICULARS = {
    "scifact": binary_qrels_checks,
    "esconv-strategy": esconv_strategy_checks,
    "esconv-reply": esconv_reply_checks,
    "robot-instructions": robot_instructions_checks,
    "trec-dl19-subset": trec_dl19_checks,
}


def build_checks(dataset, params: ValidateParams, train_split: str) -> list[Check]:
    query_ids = sorted(dataset.queries["_id"].dropna().unique())
    doc_ids = sorted(dataset.corpus["_id"].dropna().unique())
    checks = [
        text_checks("corpus", dataset.corpus, params.max_doc_chars, params.min_docs,
                    params.max_docs, params.max_id_chars, params.max_title_chars),
        text_checks("queries", dataset.queries, params.max_query_chars, params.min_queries,
                    params.max_queries, params.max_id_chars),
    ]
    for split, frame in sorted(dataset.qrels.items()):
        checks.append(qrels_checks(split, frame, query_ids, doc_ids, params.allowed_grades))
        checks.append(relevant_per_query_check(split, frame))
    if train_split in dataset.qrels:
        for split, frame in sorted(dataset.qrels.items()):
            if split != train_split:
                checks.append(disjoint_splits_check(train_split, split,
                                                    dataset.qrels[train_split], frame))
    particulars = PARTICULARS.get(dataset.name)
    if particulars is not None:
        checks += particulars(dataset)
    return checks


def run_check(context, check: Check):
    """Validate one frame with Great Expectations; returns the suite's validation result."""
    source = context.data_sources.add_or_update_pandas(name="beir")
    asset = source.add_dataframe_asset(name=check.name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": check.frame.reset_index(drop=True)})
    suite = context.suites.add(gx.ExpectationSuite(name=check.name,
                                                   expectations=check.expectations))
    return batch.validate(suite, result_format="COMPLETE")


def ephemeral_context():
    """An in-memory GE context: nothing written to disk, no network, no progress bars."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
    return context
