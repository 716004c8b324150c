"""Build the bundled datasets' BEIR folders from the shared upstream copies (once, by hand).

    .venv/bin/python scripts/prepare_datasets.py [--shared ../shared/datasets] [NAME ...]
    dvc add data/raw/<NAME> && dvc push -r bundled data/raw/<NAME>.dvc

Writes data/raw/<NAME>/ (corpus.jsonl, queries.jsonl, qrels/<split>.tsv, SOURCE.md, licence)
for each NAME (default: all of esconv-strategy, esconv-reply, robot-instructions,
trec-dl19-subset) and prints the counts. The pipeline never reads the shared copy: it reads
data/raw, which DVC restores from the in-repo remote (data/dvc-store).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.data.bundled import BUILDERS  # noqa: E402
from components.settings import REPO_ROOT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BUILDERS)}")
    parser.add_argument("--shared", type=Path, default=REPO_ROOT.parent / "shared" / "datasets",
                        help="folder holding the upstream copies (esconv/, ...)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "raw")
    args = parser.parse_args()
    unknown = set(args.names) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown dataset(s) {sorted(unknown)}; known: {', '.join(BUILDERS)}")
    for name in args.names or list(BUILDERS):
        source, build = BUILDERS[name]
        counts = build(args.shared / source, args.out / name)
        print(f"{name}: {json.dumps(counts)}")


if __name__ == "__main__":
    main()
