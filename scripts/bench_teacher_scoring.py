"""Teacher scoring throughput (fp32 vs bf16 autocast) next to plain matmul throughput.

    .venv/bin/python scripts/bench_teacher_scoring.py [--model-dir outputs/base_model]
        [--batch-size 8] [--doc-tokens 192] [--batches 3] [--threads 2]

Scores real-sized (document, query) pairs with `LLMReranker.score_pairs` (the production path:
left padding, last-position head, fp32 yes/no softmax) and reports tokens/s per dtype. As a
yardstick it times a model-shaped matmul ([batch*seq, hidden] x [hidden, intermediate]) in the
same dtype and prints the ratio of achieved FLOP/s, counting the model as
2 x non-embedding params x tokens (with the head on the last position only, the embedding
matrix costs a lookup, not a matmul). Without --model-dir the bundled SmolLM2 GGUF is converted
into a temporary folder first (~25 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ is not a package; make `components` importable

from components.settings import configure_environment  # noqa: E402

configure_environment()

import torch  # noqa: E402

from components.llm.base_model import prepare_base_model  # noqa: E402
from components.teacher.reranker import LLMReranker, bf16_available  # noqa: E402

WORDS = "the study measured outcomes in patients receiving treatment over twelve months".split()


def make_pairs(tokenizer, n: int, doc_tokens: int) -> list[tuple[str, str]]:
    """`n` pairs whose documents are ~`doc_tokens` tokens long (then cut to exactly that)."""
    pairs = []
    for i in range(n):
        words = [WORDS[(i + j) % len(WORDS)] for j in range(doc_tokens * 2)]
        pairs.append((" ".join(words), f"Treatment {i} improves outcomes in patients."))
    return pairs


def time_scoring(reranker, pairs, batch_size: int) -> tuple[float, int]:
    reranker.score_pairs(pairs[:batch_size], batch_size)  # warm-up (allocator, kernels)
    encoded = reranker.prompts.encode_pairs(pairs)
    tokens = sum(len(ids) for ids in encoded)
    start = time.perf_counter()
    reranker.score_pairs(pairs, batch_size)
    return time.perf_counter() - start, tokens


def matmul_flops_per_s(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 3.0) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--doc-tokens", type=int, default=192)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or prepare_base_model(out_dir=Path(tmp) / "base_model")
        reranker = LLMReranker.from_pretrained(
            model_dir, task="scifact", max_doc_tokens=args.doc_tokens
        )
        config = reranker.model.config
        params = sum(p.numel() for p in reranker.model.parameters())
        non_embedding = params - config.vocab_size * config.hidden_size
        pairs = make_pairs(reranker.tokenizer, args.batch_size * args.batches, args.doc_tokens)

        print(f"model {model_dir}: {params / 1e6:.1f}M params ({non_embedding / 1e6:.1f}M non-emb)")
        print(f"{len(pairs)} pairs, batch {args.batch_size}, {torch.get_num_threads()} threads")
        dtypes = [("fp32", False, torch.float32)]
        if bf16_available(reranker.device):
            dtypes.append(("bf16-autocast", True, torch.bfloat16))
        else:
            print("no native bf16 on this device: bf16 skipped")
        for name, use_bf16, dtype in dtypes:
            reranker.bf16 = use_bf16
            seconds, tokens = time_scoring(reranker, pairs, args.batch_size)
            model_flops = 2 * non_embedding * tokens / seconds
            rows = args.batch_size * (tokens // len(pairs))
            mm = matmul_flops_per_s(rows, config.hidden_size, config.intermediate_size, dtype)
            print(
                f"{name:14s} {tokens / seconds:8.0f} tokens/s ({tokens} tokens, {seconds:.1f} s) | "
                f"model {model_flops / 1e9:6.1f} GFLOP/s, matmul [{rows}x{config.hidden_size}]"
                f"x[{config.hidden_size}x{config.intermediate_size}] {mm / 1e9:6.1f} GFLOP/s, "
                f"ratio {model_flops / mm:.2f}"
            )


if __name__ == "__main__":
    main()
