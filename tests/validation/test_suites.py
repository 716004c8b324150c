"""Great Expectations suites against a good fixture (one bad fixture per rule: the catalogue in
`tests/reliability/test_bad_input_catalogue.py`)."""

from components.validation.report import validate_dataset
from tests.helpers import section, write_beir

PARAMS = section("validate", allowed_grades=[0, 1, 2], max_doc_chars=500)


def _validate(root, params=PARAMS):
    return validate_dataset(root, params, train_split="train")


def test_good_fixture_passes(tmp_path):
    report = _validate(write_beir(tmp_path / "ds"))
    assert report.success, report.summary()
    assert report.expectations_run > 20
    assert "passed" in report.summary()


def test_row_count_bounds(tmp_path):
    params = section("validate", allowed_grades=[0, 1, 2], min_docs=10)
    report = _validate(write_beir(tmp_path / "ds"), params)
    assert [f.rule for f in report.failures] == ["corpus.row_count"]
    assert "observed 5" in report.failures[0].sample_values[0]
