"""Load a dataset in BEIR layout, reporting malformed input as `file:line: reason`.

Layout: `corpus.jsonl` (`_id`, optional `title`, `text`), `queries.jsonl` (`_id`, `text`),
`qrels/<split>.tsv` (header `query-id corpus-id score`). Split names come from the
qrels file names. Parsing is lenient about *content* (a missing `_id` or an empty text is
kept so that the validation suites can report it with its rule and line), and strict about
*form*: a line that is not a JSON object, an object with a key twice, an `_id`, `title` or
`text` that is not a JSON string (a number, list or object would otherwise be indexed as its
Python repr), bytes that are not UTF-8, or a TSV row with the wrong number of fields raise
`DataFormatError` naming every bad line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

QRELS_HEADER = ["query-id", "corpus-id", "score"]
MAX_REPORTED_ERRORS = 20


class DataFormatError(ValueError):
    """One or more lines of a data file could not be parsed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:MAX_REPORTED_ERRORS]
        more = len(problems) - len(shown)
        text = "\n".join(f"  {p}" for p in shown)
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(f"malformed input ({len(problems)} problem(s)):\n{text}")


def _decode_lines(path: Path, problems: list[str]):
    """Yield (line number, text) for each line; undecodable lines are reported, not yielded."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(
                    f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
                )


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads hook: an object naming a key twice is an error (json keeps the last)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _DuplicateKey(twice)
    return record


def _parse_object(line: str):
    """The line's JSON value; raises ValueError with the reason, as `read_jsonl` reports it."""
    try:
        return json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except _DuplicateKey as exc:
        raise ValueError(f"the key {str(exc)!r} appears twice in one object") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_jsonl(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a BEIR JSONL file into a frame with `columns` plus `_line` (1-based)."""
    problems: list[str] = []
    rows = []
    for number, line in _decode_lines(path, problems):
        if not line.strip():
            continue
        try:
            record = _parse_object(line)
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        row = {col: record.get(col) for col in columns}
        wrong = [f"`{col}` is {type(value).__name__} {json.dumps(value)[:40]}"
                 for col, value in row.items() if value is not None and not isinstance(value, str)]
        if wrong:
            problems.append(f"{path}:{number}: must be JSON strings: {'; '.join(wrong)}")
            continue
        # JSON may escape a lone surrogate (\ud800), which no UTF-8 writer downstream accepts.
        broken = [col for col, value in row.items() if value and not _encodable(value)]
        if broken:
            problems.append(f"{path}:{number}: {', '.join(f'`{c}`' for c in broken)} holds a "
                            "lone surrogate escape (\\ud800-\\udfff), which is not valid Unicode")
            continue
        if "title" in row and row["title"] is None:
            row["title"] = ""  # corpora without titles are valid
        row["_line"] = number
        rows.append(row)
    if problems:
        raise DataFormatError(problems)
    return pd.DataFrame(rows, columns=[*columns, "_line"])


def read_qrels(path: Path) -> pd.DataFrame:
    """Read a qrels TSV with header; grades stay strings so validation can check them."""
    problems: list[str] = []
    rows = []
    for number, line in _decode_lines(path, problems):
        fields = line.rstrip("\r\n").split("\t")
        if number == 1:
            if fields != QRELS_HEADER:
                problems.append(
                    f"{path}:1: header must be {' '.join(QRELS_HEADER)!r} (tab-separated), "
                    f"got {' '.join(fields)!r}"
                )
                break
            continue
        if fields == [""]:
            continue
        if len(fields) != 3:
            problems.append(
                f"{path}:{number}: expected 3 tab-separated fields, found {len(fields)}"
            )
            continue
        rows.append(
            {"query-id": fields[0], "corpus-id": fields[1], "score": fields[2], "_line": number}
        )
    if problems:
        raise DataFormatError(problems)
    return pd.DataFrame(rows, columns=[*QRELS_HEADER, "_line"])


@dataclass
class BeirDataset:
    """A dataset as frames (for validation) with dict views (for retrieval and evaluation).

    Judgements (`qrels`) are read on first use, each split through
    `components.data.judgements`, which records who read what: test judgements reach
    `validate` and `evaluate` only (`tests/e2e` checks this over a whole pipeline run).
    """

    path: Path
    corpus: pd.DataFrame
    queries: pd.DataFrame
    qrels_files: dict[str, Path] = field(default_factory=dict)
    _qrels: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def splits(self) -> list[str]:
        return sorted(self.qrels_files)

    @property
    def qrels(self) -> dict[str, pd.DataFrame]:
        """Every split's judgements as frames (validation): reads them all."""
        return {split: self.qrels_frame(split) for split in self.splits}

    def qrels_frame(self, split: str) -> pd.DataFrame:
        if split not in self.qrels_files:
            raise KeyError(f"{self.path}: no qrels for split {split!r} (have: {self.splits})")
        if split not in self._qrels:
            from components.data.judgements import record_read

            record_read(self.qrels_files[split])
            self._qrels[split] = read_qrels(self.qrels_files[split])
        return self._qrels[split]

    def file_of(self, part: str) -> Path:
        if part in ("corpus", "queries"):
            return self.path / f"{part}.jsonl"
        return self.path / "qrels" / f"{part}.tsv"

    def corpus_dict(self) -> dict[str, dict[str, str]]:
        columns = zip(self.corpus["_id"], self.corpus["title"], self.corpus["text"], strict=True)
        return {docid: {"title": title or "", "text": text or ""} for docid, title, text in columns}

    def queries_dict(self) -> dict[str, str]:
        return dict(zip(self.queries["_id"], self.queries["text"], strict=True))

    def qrels_dict(self, split: str) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for qid, docid, score in self.qrels_frame(split)[QRELS_HEADER].itertuples(index=False):
            result.setdefault(qid, {})[docid] = int(score)
        return result


def load_beir(path: str | Path, qrels: bool = True) -> BeirDataset:
    """Load a BEIR folder. Missing files raise FileNotFoundError naming them.

    `qrels=True` parses every judgement file now, so one error lists every malformed line of
    every file (validation). Pipeline stages pass `qrels=False`: they read the judgements of
    the splits they may use, when they use them.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder {path} does not exist")
    corpus_file, queries_file = path / "corpus.jsonl", path / "queries.jsonl"
    qrels_files = sorted((path / "qrels").glob("*.tsv"))
    missing = [str(p) for p in (corpus_file, queries_file) if not p.is_file()]
    if not qrels_files:
        missing.append(f"{path / 'qrels'}/<split>.tsv")
    if missing:
        raise FileNotFoundError(
            f"dataset {path} is not in BEIR layout; missing: {', '.join(missing)}"
        )

    problems: list[str] = []
    parts = {}
    readers = [
        ("corpus", lambda: read_jsonl(corpus_file, ["_id", "title", "text"])),
        ("queries", lambda: read_jsonl(queries_file, ["_id", "text"])),
    ]
    dataset = BeirDataset(path=path, corpus=pd.DataFrame(), queries=pd.DataFrame(),
                          qrels_files={f.stem: f for f in qrels_files})
    if qrels:
        readers += [(f.stem, lambda f=f: dataset.qrels_frame(f.stem)) for f in qrels_files]
    for part, reader in readers:
        try:
            parts[part] = reader()
        except DataFormatError as exc:  # collect across files so one run shows everything
            problems.extend(exc.problems)
    if problems:
        raise DataFormatError(problems)
    dataset.corpus, dataset.queries = parts.pop("corpus"), parts.pop("queries")
    return dataset
