"""A tiny llama model with random weights, written as GGUF for llama.cpp: for timing, not quality.

    python tests/tiny_gguf.py OUT.gguf [--layers 8] [--width 1024] [--seed 0]

Its output is meaningless text, but every request costs what a real model of this shape costs (8 layers, width
1024, 16 attention heads, 4 KV heads, 2816 FFN, ~92 M parameters, 185 MB in F16 with the defaults): what
llama-server's scheduling, batching and streaming are measured on. Written with the `gguf` package (no download),
deterministically (the same arguments give the same bytes).

The vocabulary (1024 pieces, SentencePiece style, llama.cpp's "llama" tokenizer): <unk>, <s>, </s>, the 256
byte-fallback pieces, single characters, then words, with each word's prefixes so that the tokenizer's merges
reach the whole word (a prompt of llm_bench's synthetic words is one token per word), then filler words. The
output rows of the special and byte pieces are zero, so their logit is always 0 while a normal piece's is
positive: under greedy sampling (temperature 0) the model never ends a stream early nor emits a byte piece, and
every request streams exactly max_tokens tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6
SPACE = "\u2581"  # SentencePiece's word boundary
WORDS = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
         "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they",
         "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when",
         "will", "would", "who", "so", "no", "time", "model", "data", "system", "node", "cluster", "memory",
         "explain", "two", "sentences", "what", "supercomputer", "hello", "world", "token", "stream")
"""llm_bench.py's synthetic-prompt words (WORDS there) and the words of its default prompt: one token each."""
CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()"


def vocabulary(size: int) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, types): specials, bytes, characters, words and their prefixes, then filler to `size`."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL, *([TOKEN_BYTE] * 256)]
    normal: list[str] = [SPACE, *CHARACTERS]
    for word in WORDS:
        piece = SPACE + word
        normal.extend(piece[:end] for end in range(2, len(piece) + 1))
    normal = list(dict.fromkeys(normal))
    filler = 0
    while len(pieces) + len(normal) < size:
        normal.append(f"{SPACE}w{filler}")
        filler += 1
    if len(pieces) + len(normal) > size:
        raise ValueError(f"a vocabulary of {size} pieces cannot hold the {len(pieces) + len(normal)} needed")
    pieces.extend(normal)
    types.extend([TOKEN_NORMAL] * len(normal))
    # longer pieces first: SentencePiece merges the best-scored pair, so a word's prefix chain ends at the word
    scores = [0.0] * (len(pieces) - len(normal)) + [float(len(p)) for p in normal]
    return pieces, scores, types


def write(path: Path, layers: int = 8, width: int = 1024, heads: int = 16, kv_heads: int = 4, ffn: int = 2816,
          vocab: int = 1024, context: int = 4096, seed: int = 0) -> None:
    """The model, written to path."""
    rng = np.random.default_rng(seed)
    pieces, scores, types = vocabulary(vocab)
    head_dim = width // heads

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("orchc-tiny-random-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    ones = np.ones(width, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weights(vocab, width))
    for block in range(layers):
        prefix = f"blk.{block}."
        writer.add_tensor(prefix + "attn_norm.weight", ones)
        writer.add_tensor(prefix + "attn_q.weight", weights(width, width))
        writer.add_tensor(prefix + "attn_k.weight", weights(kv_heads * head_dim, width))
        writer.add_tensor(prefix + "attn_v.weight", weights(kv_heads * head_dim, width))
        writer.add_tensor(prefix + "attn_output.weight", weights(width, width))
        writer.add_tensor(prefix + "ffn_norm.weight", ones)
        writer.add_tensor(prefix + "ffn_gate.weight", weights(ffn, width))
        writer.add_tensor(prefix + "ffn_up.weight", weights(ffn, width))
        writer.add_tensor(prefix + "ffn_down.weight", weights(width, ffn))
    writer.add_tensor("output_norm.weight", ones)
    output = weights(vocab, width)
    output[[i for i, kind in enumerate(types) if kind != TOKEN_NORMAL]] = 0
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write(args.out, layers=args.layers, width=args.width, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
