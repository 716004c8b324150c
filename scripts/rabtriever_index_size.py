"""How small Rabtriever's document index can get: stored tokens and precision, on dev.

The index keeps, per document, a pooled embedding (fp32) and the token states of one decoder
layer (fp16, `rabtriever.maxsim_doc_tokens` tokens at most): most of its bytes. This rereads the
trained student's stored index (`outputs/<dataset>/rabtriever`) cut to fewer tokens, or with its
states rounded to int8 (one fp16 scale per token), and reranks the held-out dev queries' BM25
top-K (`rank_lists.depth`) as the `rabtriever` stage does, mixed with BM25 by the weight
`rank_lists` used. Each variant is compared with the stored index, paired over
the dev queries, Holm-corrected. Nothing is retrained; no test judgement is read.

    .venv/bin/python scripts/rabtriever_index_size.py [--tokens 512 256 128 64] [--params P]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ is not a package; make `components` importable

import torch  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.data.judgements import read_judgements  # noqa: E402
from components.data.splits import HELDOUT, QuerySplits  # noqa: E402
from components.evaluation.headline import win_tie_loss  # noqa: E402
from components.evaluation.metrics import METRIC_LABELS, per_query_metrics  # noqa: E402
from components.evaluation.significance import compare, holm  # noqa: E402
from components.fusion import interpolate, read_weight  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.rabtriever.late_interaction import TokenStates  # noqa: E402
from components.rabtriever.model import Rabtriever  # noqa: E402
from components.runs import read_trec_run  # noqa: E402


def cut(tokens: TokenStates, width: int) -> TokenStates:
    """The first `width` tokens of every document (padding stays -1 / 0)."""
    return TokenStates(tokens.token_ids[:, :width].clone(),
                       {layer: s[:, :width].clone() for layer, s in tokens.states.items()})


def int8_round_trip(tokens: TokenStates) -> TokenStates:
    """Token states rounded to int8 with one scale per token (absmax), read back as fp16."""
    states = {}
    for layer, s in tokens.states.items():
        values = s.float()
        scale = values.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
        states[layer] = (torch.round(values / scale).clamp(-127, 127) * scale).half()
    return TokenStates(tokens.token_ids, states)


def kb_per_doc(tokens: TokenStates, hidden: int, int8: bool) -> float:
    """Stored bytes per document (pooled fp32 + the kept token ids and states), in KB."""
    kept = float(tokens.mask.sum(1).float().mean())
    per_token = 4 + len(tokens.states) * ((hidden + 2) if int8 else 2 * hidden)
    return (4 * hidden + kept * per_token) / 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 256, 128, 64])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    layout, metric = Layout(params.data.name), params.evaluate.primary
    splits = QuerySplits.load(layout.splits_file)
    qrels = read_judgements(params.data.dataset_dir(), splits.train_split, splits.dev_evaluated)
    queries = load_beir(params.data.dataset_dir(), qrels=False).queries_dict()
    bm25 = read_trec_run(layout.run_dir("bm25") / f"{HELDOUT}.trec")[0]
    student = Rabtriever.load(layout.root / "rabtriever", model_path=layout.teacher_model,
                              bf16=params.teacher.bf16)
    stored, hidden = student.doc_index.tokens, student.predictor.hidden_size
    indexed = set(student.doc_ids)
    depth = params.rank_lists.depth
    qids = sorted(q for q in splits.dev_evaluated if q in qrels)
    candidates = {q: [d for d, _ in bm25.get(q, [])[:depth] if d in indexed] for q in qids}
    asked = {q: queries[q] for q in qids}
    weight = read_weight(layout.rank_lists_dir)  # what the stages used (auto: chosen on dev)

    def score(tokens: TokenStates) -> dict[str, float]:
        student.set_index(student.doc_ids, student.doc_embeddings, tokens)
        mixed = interpolate(bm25, student.rerank(asked, candidates), weight)
        return per_query_metrics(mixed, qrels, [metric], qids)[metric]

    variants = [(f"{w} tokens, fp16", cut(stored, w), False) for w in args.tokens]
    variants += [(f"{w} tokens, int8", int8_round_trip(cut(stored, w)), True)
                 for w in args.tokens]
    reference = score(stored)
    rows = []
    for name, tokens, int8 in variants:
        scores = score(tokens)
        p, diff = compare(scores, reference, params.evaluate.test)
        rows.append((name, kb_per_doc(tokens, hidden, int8), sum(scores.values()) / len(qids),
                     diff, p, win_tie_loss(scores, reference)))
    adjusted = holm([row[4] for row in rows])
    label = METRIC_LABELS.get(metric, metric)
    print(f"dev ({len(qids)} held-out queries), stored index ({stored.token_ids.shape[1]} "
          f"tokens, fp16) {label} {sum(reference.values()) / len(qids):.4f}\n")
    print(f"| stored token states | KB a document | dev {label} | Δ vs stored | p (Holm) | W/T/L |")
    print("|---|---|---|---|---|---|")
    for (name, kb, mean, diff, _, wtl), p_holm in zip(rows, adjusted, strict=True):
        print(f"| {name} | {kb:.0f} | {mean:.4f} | {diff:+.4f} | {p_holm:.3f} | "
              f"{wtl[0]}/{wtl[1]}/{wtl[2]} |")


if __name__ == "__main__":
    main()
