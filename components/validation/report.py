"""Run the validation suites on a dataset folder and turn the results into a report.

The report is what a person reads when validation fails: for every failed rule it names
the file, the number of bad rows, a sample of bad values and the lines they sit on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.config import ValidateParams
from components.data.beir import DataFormatError, load_beir


@dataclass
class Failure:
    rule: str
    description: str
    file: str
    bad_rows: int
    sample_values: list = field(default_factory=list)
    sample_lines: list[int] = field(default_factory=list)

    def describe(self) -> str:
        where = self.file
        if self.sample_lines:
            where += ":" + ",".join(str(n) for n in self.sample_lines)
        values = f"; e.g. {self.sample_values}" if self.sample_values else ""
        return f"[{self.rule}] {self.description}: {self.bad_rows} bad row(s) at {where}{values}"


@dataclass
class ValidationReport:
    dataset: str
    success: bool
    checked: dict[str, int] = field(default_factory=dict)  # check name -> rows
    expectations_run: int = 0
    failures: list[Failure] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def summary(self) -> str:
        if self.success:
            return (f"validation passed: {self.dataset} ({self.expectations_run} expectations "
                    f"over {len(self.checked)} tables)")
        lines = [f"validation FAILED for {self.dataset}: {len(self.failures)} rule(s) violated"]
        lines += [f"  - {failure.describe()}" for failure in self.failures]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation: {self.dataset} — {status}", "",
                 f"{self.expectations_run} expectations over {len(self.checked)} tables.", "",
                 "| table | rows |", "|---|---|"]
        lines += [f"| {name} | {rows} |" for name, rows in self.checked.items()]
        if self.failures:
            lines += ["", "## Failed rules", "",
                      "| rule | file | bad rows | lines (sample) | values (sample) |",
                      "|---|---|---|---|---|"]
            for f in self.failures:
                lines.append(f"| `{f.rule}` {f.description} | {f.file} | {f.bad_rows} | "
                             f"{f.sample_lines} | {f.sample_values} |")
        return "\n".join(lines) + "\n"


def _failure_from(result, check, dataset, sample_size: int) -> Failure:
    meta = result.expectation_config.meta or {}
    details = result.result or {}
    indices = details.get("unexpected_index_list") or []
    lines: list[int] = []
    for index in indices[:sample_size]:
        # pandas index lists come as ints, or dicts for compound-column expectations
        row = index if isinstance(index, int) else None
        if row is not None and "_line" in check.frame.columns:
            lines.append(int(check.frame.reset_index(drop=True).loc[row, "_line"]))
    values = list(details.get("partial_unexpected_list") or [])[:sample_size]
    bad = details.get("unexpected_count")
    if bad is None:  # table-level expectations (row counts) report an observed value
        bad = 0
        values = [f"observed {details.get('observed_value')}"]
    return Failure(
        rule=meta.get("rule", result.expectation_config.type),
        description=meta.get("description", ""),
        file=str(dataset.file_of(meta.get("part", check.part))),
        bad_rows=int(bad),
        sample_values=[v if isinstance(v, int | float | str) else str(v) for v in values],
        sample_lines=lines,
    )


def validate_dataset(path: str | Path, params: ValidateParams, train_split: str = "train"
                     ) -> ValidationReport:
    """Load and validate a BEIR folder. Format errors become a `format` failure."""
    # Imported here: GE takes ~3 s to import and format errors need none of it.
    from components.validation.suites import build_checks, ephemeral_context, run_check

    path = Path(path)
    try:
        dataset = load_beir(path)
    except DataFormatError as exc:
        failures = []
        for problem in exc.problems:
            location, _, reason = problem.partition(": ")
            file, _, line = location.rpartition(":")
            failures.append(Failure("format.parseable", reason, file, 1,
                                    sample_lines=[int(line)] if line.isdigit() else []))
        return ValidationReport(path.name, False, failures=failures)

    report = ValidationReport(dataset.name, True)
    context = ephemeral_context()
    for check in build_checks(dataset, params, train_split):
        outcome = run_check(context, check)
        report.checked[check.name] = len(check.frame)
        report.expectations_run += len(outcome.results)
        for result in outcome.results:
            if not result.success:
                report.failures.append(_failure_from(result, check, dataset, params.sample_size))
    report.success = not report.failures
    return report
