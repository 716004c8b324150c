"""Build the bundled BEIR folders from their upstream copies (build time only).

`scripts/prepare_datasets.py` calls these once to write `data/raw/<name>/`, which is then
`dvc add`-ed and pushed to the in-repo remote; the pipeline only ever reads `data/raw`.
Each builder writes `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv` and `SOURCE.md`
(origin, licence, how the folder was derived, counts) and returns the counts.

- `esconv-strategy`: dialogue context -> the support strategy of the supporter's next reply.
  The corpus is the 8 ESConv strategies, each a short description written for this project.
- `esconv-reply`: dialogue context -> the next supporter reply, among all replies.
- `robot-instructions`: LIBERO instruction -> goal specification (goal predicates rendered
  as text); test instructions come from suites the training instructions do not.
- `trec-dl19-subset`: TREC DL 2019 passage queries with graded qrels over a 5000-passage
  MS MARCO subset; no training split (the models train on SciFact, see the catalog).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

QRELS_HEADER = "query-id\tcorpus-id\tscore\n"

# ESConv's 8 support strategies (Liu et al., ACL 2021). The descriptions are this project's
# own wording: what a supporter does when using the strategy, without example replies.
ESCONV_STRATEGIES: dict[str, tuple[str, str]] = {
    "Questions": (
        "questions",
        "Ask the help-seeker a question, open or specific, to learn more about their "
        "situation, their feelings or what they have already tried, so they can put the "
        "problem into their own words."),
    "Restatement or Paraphrasing": (
        "restatement-or-paraphrasing",
        "Say back, briefly and in fresh words, what the help-seeker has just told you, so "
        "they know they were heard and can see their situation more clearly."),
    "Reflection of feelings": (
        "reflection-of-feelings",
        "Name the emotions the help-seeker expresses or implies, such as sadness, anger, "
        "fear or loneliness, and show that you understand how they feel."),
    "Self-disclosure": (
        "self-disclosure",
        "Share a similar experience or feeling of your own, to show empathy and that the "
        "help-seeker is not alone in what they are going through."),
    "Affirmation and Reassurance": (
        "affirmation-and-reassurance",
        "Affirm the help-seeker's strengths, efforts and feelings as valid, and offer "
        "encouragement and comfort that things can get better."),
    "Providing Suggestions": (
        "providing-suggestions",
        "Offer concrete ideas, options or actions the help-seeker could try in order to cope "
        "with or change their situation, without telling them what they must do."),
    "Information": (
        "information",
        "Give useful facts, figures, resources or explanations about the help-seeker's "
        "problem or about the options open to them."),
    "Other": (
        "other",
        "Greetings, thanks, farewells, small talk and other pleasantries that keep the "
        "conversation going but use no specific support strategy."),
}

# LIBERO's benchmark suites: libero_90 holds the pre-training tasks; the other four are the
# evaluation suites, so their instructions make the test set.
ROBOT_TRAIN_SUITES = ("libero_90",)
ROBOT_TEST_SUITES = ("libero_10", "libero_goal", "libero_object", "libero_spatial")


def _read_jsonl(path: Path) -> list[dict]:
    # Iterate file lines, not str.splitlines(): texts may hold U+2028 and other separators.
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_qrels(path: Path, rows: list[tuple[str, str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(QRELS_HEADER + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows),
                    encoding="utf-8")


def _fresh(dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    return dst


def _upstream_source(src: Path) -> str:
    return "\n".join("> " + line if line else ">" for line in
                     (src / "SOURCE.md").read_text(encoding="utf-8").splitlines())


# --- ESConv -------------------------------------------------------------------------------

def _esconv_examples(src: Path) -> list[dict]:
    """(id, split, strategy) per window, checked against the corpus' strategy tags."""
    examples = _read_jsonl(src / "examples.jsonl")
    tags = {doc["_id"]: doc["metadata"]["strategy"] for doc in _read_jsonl(src / "corpus.jsonl")}
    for example in examples:
        if tags.get(f"{example['id']}-r") != example["strategy"]:
            raise ValueError(f"{src}: strategy of {example['id']} differs between "
                             "examples.jsonl and corpus.jsonl")
        if example["strategy"] not in ESCONV_STRATEGIES:
            raise ValueError(f"{src}: unknown strategy {example['strategy']!r}")
    return examples


def build_esconv_strategy(src: Path, dst: Path) -> dict:
    """Queries: ESConv's dialogue contexts (verbatim). Corpus: the 8 strategies. Qrels: the
    strategy of the supporter's actual next reply, exactly one per query, grade 1."""
    dst = _fresh(dst)
    examples = _esconv_examples(src)
    corpus = [{"_id": doc_id, "title": name, "text": text, "metadata": {}}
              for name, (doc_id, text) in ESCONV_STRATEGIES.items()]
    _write_jsonl(dst / "corpus.jsonl", corpus)
    shutil.copyfile(src / "queries.jsonl", dst / "queries.jsonl")
    counts: dict = {"corpus": len(corpus), "queries": len(examples)}
    for split in ("dev", "test"):
        rows = [(e["id"], ESCONV_STRATEGIES[e["strategy"]][0], 1)
                for e in examples if e["split"] == split]
        _write_qrels(dst / "qrels" / f"{split}.tsv", rows)
        counts[f"qrels/{split}"] = len(rows)
        counts[f"strategies/{split}"] = dict(Counter(e["strategy"] for e in examples
                                                     if e["split"] == split).most_common())
    shutil.copyfile(src / "raw" / "LICENSE.CC-BY-NC-4.0.txt", dst / "LICENSE.CC-BY-NC-4.0.txt")
    strategy_lines = "\n".join(f"- `{doc_id}` ({name}): {text}"
                               for name, (doc_id, text) in ESCONV_STRATEGIES.items())
    (dst / "SOURCE.md").write_text(f"""# ESConv strategy retrieval (rationale-based task)

Derived by `scripts/prepare_datasets.py` (`components/data/bundled.py:build_esconv_strategy`)
from the project's shared ESConv copy, whose provenance is:

{_upstream_source(src)}

## This folder
- `queries.jsonl`: the dialogue contexts, verbatim from the shared copy (up to 4 previous
  turns, one `role: text` line each; supporter turns carry no strategy tag).
- `corpus.jsonl`: the 8 support strategies; `title` is ESConv's strategy name, `text` a short
  description written for this project (not taken from the ESConv paper or data):
{strategy_lines}
- `qrels/{{dev,test}}.tsv`: query -> the strategy of the supporter's actual next reply
  (grade 1, exactly one per query). No train split exists upstream here: the models train on
  `dev` and are evaluated on `test` (`components/data/catalog.py`).

Counts: corpus {counts['corpus']}; queries {counts['queries']}; qrels dev {counts['qrels/dev']},
test {counts['qrels/test']}.
Strategies (dev): {counts['strategies/dev']}.
Strategies (test): {counts['strategies/test']}.

License: CC BY-NC 4.0 (`LICENSE.CC-BY-NC-4.0.txt`); upstream README: "Data and codes are for
academic research use only." Non-commercial.
""", encoding="utf-8")
    return counts


def build_esconv_reply(src: Path, dst: Path) -> dict:
    """The shared BEIR files as they are: context -> actual next reply among all replies."""
    dst = _fresh(dst)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/dev.tsv", "qrels/test.tsv"):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dst / name)
    shutil.copyfile(src / "raw" / "LICENSE.CC-BY-NC-4.0.txt", dst / "LICENSE.CC-BY-NC-4.0.txt")
    corpus = _read_jsonl(dst / "corpus.jsonl")
    counts = {"corpus": len(corpus), "queries": len(_read_jsonl(dst / "queries.jsonl"))}
    for split in ("dev", "test"):
        lines = (dst / "qrels" / f"{split}.tsv").read_text().splitlines()
        counts[f"qrels/{split}"] = len(lines) - 1
    duplicates = sum(n - 1 for n in Counter(d["text"] for d in corpus).values() if n > 1)
    (dst / "SOURCE.md").write_text(f"""# ESConv reply retrieval (rationale-based task)

Copied by `scripts/prepare_datasets.py` (`components/data/bundled.py:build_esconv_reply`),
unchanged, from the project's shared ESConv copy, whose provenance is:

{_upstream_source(src)}

## This folder
- `queries.jsonl`: dialogue contexts (`<id>`); `corpus.jsonl`: every supporter reply of the
  dev and test windows (`<id>-r`, `metadata.strategy` = its ESConv strategy);
  `qrels/{{dev,test}}.tsv`: `<id>` -> `<id>-r`, grade 1, exactly one per query.
- Every query ranks all {counts['corpus']} replies (dev and test alike). {duplicates} replies
  repeat another reply's text (e.g. greetings); only the actual reply counts as relevant.
- The models train on `dev` and are evaluated on `test` (`components/data/catalog.py`).

Counts: corpus {counts['corpus']}; queries {counts['queries']}; qrels dev {counts['qrels/dev']},
test {counts['qrels/test']}.

License: CC BY-NC 4.0 (`LICENSE.CC-BY-NC-4.0.txt`); upstream README: "Data and codes are for
academic research use only." Non-commercial.
""", encoding="utf-8")
    return counts


# --- LIBERO robot instructions ------------------------------------------------------------

_ENTITY = re.compile(r"^(?P<object>.+_\d+)(?P<region>(?:_[a-z]+)*)$")
# Table areas named after a nearby object, e.g. living_room_table_plate_left_region.
_TABLE_AREA = re.compile(
    r"^(?P<table>.+_table)_(?P<object>.+)_(?P<side>left|right|front|back)_region$")
_SIDES = {"left": "left of", "right": "right of", "front": "in front of", "back": "behind"}
_PREDICATE = re.compile(r"\((\w+)((?:\s+[\w]+)+)\)")
_REGION_WORDS = {"contain": "compartment", "cook": "cooking area", "heating": "heating area"}
_POSITIONS = {"top", "middle", "bottom", "front", "back", "left", "right"}


def render_entity(name: str) -> str:
    """`desk_caddy_1_back_contain_region` -> `the back compartment of desk caddy 1`."""
    area = _TABLE_AREA.match(name)
    if area:
        return (f"the {area['table'].replace('_', ' ')} area {_SIDES[area['side']]} the "
                f"{area['object'].replace('_', ' ')}")
    match = _ENTITY.match(name)
    if not match:
        return name.replace("_", " ")
    obj = match["object"].replace("_", " ")
    words = [w for w in match["region"].split("_") if w]
    if not words:
        return f"the {obj}"
    if words[-1] == "region":
        words = words[:-1]
    if words == ["top", "side"]:
        return f"the top surface of the {obj}"
    if len(words) == 1 and words[0] in _POSITIONS:
        words.append("compartment")
    region = " ".join(_REGION_WORDS.get(w, w) for w in words) or "area"
    return f"the {region} of the {obj}"


_TEMPLATES = {
    "on": "{0} is on {1}",
    "in": "{0} is inside {1}",
    "open": "{0} is open",
    "close": "{0} is closed",
    "turnon": "{0} is turned on",
    "turnoff": "{0} is turned off",
}


def render_goal(goal: str) -> str:
    """A BDDL `(:goal (And ...))` as one English sentence, one clause per predicate."""
    clauses = []
    for predicate, args in _PREDICATE.findall(goal):
        if predicate.lower() == "and":
            continue
        template = _TEMPLATES.get(predicate.lower())
        entities = [render_entity(a) for a in args.split()]
        if template is None:
            clauses.append(f"{predicate.lower()}({', '.join(entities)})")
        else:
            clauses.append(template.format(*entities))
    if not clauses:
        raise ValueError(f"no goal predicates in {goal!r}")
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"Goal state: {body}."


def normalise_instruction(text: str) -> str:
    return " ".join(text.lower().split())


def _short_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def build_robot_instructions(src: Path, dst: Path) -> dict:
    """Queries: distinct instructions. Corpus: distinct goal specifications, rendered. Qrels:
    an instruction -> the goals of every LIBERO task that has it (grade 1).
    Split by suite: instructions of the evaluation suites (libero_10/goal/object/spatial)
    are `test`, libero_90's are `train`; an instruction in both stays in `train`, so no
    test instruction is seen in training."""
    dst = _fresh(dst)
    tasks = _read_jsonl(src / "libero_tasks.jsonl")
    unknown = {t["suite"] for t in tasks} - set(ROBOT_TRAIN_SUITES) - set(ROBOT_TEST_SUITES)
    if unknown:
        raise ValueError(f"{src}: suites {sorted(unknown)} are in neither split")
    goals: dict[str, dict] = {}
    by_instruction: dict[str, list[dict]] = defaultdict(list)
    for task in tasks:
        goal_id = _short_id("goal", task["goal"])
        entry = goals.setdefault(goal_id, {"_id": goal_id, "title": "",
                                           "text": render_goal(task["goal"]),
                                           "metadata": {"goal": task["goal"], "tasks": []}})
        entry["metadata"]["tasks"].append(task["id"])
        # "Turn on the stove" (libero_goal) and "turn on the stove" (libero_90) are one
        # instruction: grouping by exact text would leak it into the test split.
        by_instruction[normalise_instruction(task["instruction"])].append(
            {**task, "goal_id": goal_id})
    queries, qrels = [], {"train": [], "test": []}
    for instruction in sorted(by_instruction):
        its = by_instruction[instruction]
        suites = sorted({t["suite"] for t in its})
        split = "train" if set(suites) & set(ROBOT_TRAIN_SUITES) else "test"
        qid = _short_id("instr", instruction)
        queries.append({"_id": qid, "text": instruction,
                        "metadata": {"split": split, "suites": suites,
                                     "tasks": [t["id"] for t in its]}})
        for goal_id in sorted({t["goal_id"] for t in its}):
            qrels[split].append((qid, goal_id, 1))
    corpus = sorted(goals.values(), key=lambda g: g["_id"])
    _write_jsonl(dst / "corpus.jsonl", corpus)
    _write_jsonl(dst / "queries.jsonl", queries)
    counts: dict = {"corpus": len(corpus), "queries": len(queries), "tasks": len(tasks)}
    for split, rows in qrels.items():
        _write_qrels(dst / "qrels" / f"{split}.tsv", rows)
        counts[f"qrels/{split}"] = len(rows)
        counts[f"queries/{split}"] = len({q for q, _, _ in rows})
    shutil.copyfile(src / "LICENSE.LIBERO.MIT.txt", dst / "LICENSE.LIBERO.MIT.txt")
    example = next(t for t in tasks if t["suite"] == "libero_10")
    (dst / "SOURCE.md").write_text(f"""# LIBERO instruction -> goal specification retrieval

Derived by `scripts/prepare_datasets.py` (`components/data/bundled.py:build_robot_instructions`)
from the project's shared LIBERO copy, whose provenance is:

{_upstream_source(src)}

## This folder
- `corpus.jsonl`: the {counts['corpus']} distinct goal specifications of the {counts['tasks']}
  tasks (`goal-<sha1 of the BDDL goal>`), rendered as an English sentence, one clause per
  predicate (`On`, `In`, `Open`, `Close`, `Turnon`, `Turnoff`); object names keep their
  instance number. The BDDL goal and its task ids are in `metadata`. Example:
  `{example['goal']}` -> "{render_goal(example['goal'])}"
- `queries.jsonl`: the {counts['queries']} distinct instructions, compared in lower case with
  whitespace collapsed ("Turn on the stove" in libero_goal is libero_90's "turn on the
  stove"), stored in that normal form (`instr-<sha1 of the text>`).
- `qrels/<split>.tsv`: instruction -> the goal of every task with that instruction (grade 1;
  an instruction used in several scenes can have several goals).

## Split design
By LIBERO suite, so test instructions are unseen in training: `train` = instructions of
libero_90 (LIBERO's pre-training suite), `test` = instructions that occur only in the four
evaluation suites (libero_10, libero_goal, libero_object, libero_spatial). Two instructions
occur in both libero_90 and an evaluation suite ("pick up the book and place it in the back
compartment of the caddy", libero_10; "turn on the stove", libero_goal); they stay in
`train`. The validation suite checks the split by instruction text. Goals are documents,
not labels: a test instruction may have a goal that training tasks also have (the corpus is
shared), but its wording was never trained on.

Counts: corpus {counts['corpus']}; queries train {counts['queries/train']},
test {counts['queries/test']}; qrels train {counts['qrels/train']}, test {counts['qrels/test']}.
Small (LIBERO has 130 tasks): differences between systems of a few points are noise.

License: MIT (`LICENSE.LIBERO.MIT.txt`).
""", encoding="utf-8")
    return counts


# --- TREC DL 2019 ----------------------------------------------------------------------------

def build_trec_dl19(src: Path, dst: Path) -> dict:
    """The shared BEIR files unchanged (graded qrels 1-3, test split only)."""
    dst = _fresh(dst)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dst / name)
    rows = [line.split("\t") for line in
            (dst / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    counts = {"corpus": len(_read_jsonl(dst / "corpus.jsonl")),
              "queries": len(_read_jsonl(dst / "queries.jsonl")),
              "qrels/test": len(rows), "judged_queries": len({r[0] for r in rows}),
              "grades": dict(sorted(Counter(r[2] for r in rows).items()))}
    (dst / "SOURCE.md").write_text(f"""# TREC DL 2019 passage ranking, subset (MS MARCO v1 passages)

Copied by `scripts/prepare_datasets.py` (`components/data/bundled.py:build_trec_dl19`),
unchanged, from the project's shared copy, whose provenance is:

{_upstream_source(src)}

## This folder
`corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv` as above (the official full qrels in the
shared `extras/` are not bundled: their grade-0 passages are not in the corpus).
Counts: corpus {counts['corpus']}; queries {counts['queries']} ({counts['judged_queries']} judged;
only judged queries are evaluated); qrels {counts['qrels/test']} rows, grades {counts['grades']}.
Evaluation: graded nDCG@10 (trec_eval gains = grades). There is no training split: the
models train on SciFact's train split (`data.train_name`, `components/data/catalog.py`).

License: no licence file upstream; MS MARCO terms of use (non-commercial research only).
""", encoding="utf-8")
    return counts


BUILDERS = {
    "esconv-strategy": ("esconv", build_esconv_strategy),
    "esconv-reply": ("esconv", build_esconv_reply),
    "robot-instructions": ("robot-instructions", build_robot_instructions),
    "trec-dl19-subset": ("trec-dl19-subset", build_trec_dl19),
}
