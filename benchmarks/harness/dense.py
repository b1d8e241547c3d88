"""The (B, H, N, D) attention call, `flash_attention.attention(q, k, v, causal=...)`: the seed and paper grids
(N_q == N_k, as many key as query heads) and the model grid (GQA, chunked prefill with N_q < N_k)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checking import CHECK_HEADS, Reference, query_heads
from .methods import (
    BASELINE, OURS, PEERS, SDPA_BACKENDS, Method, backend_unavailable_reason, fa4_dense, fa4_function, needs_cuda,
    random_tensors, sdpa, sdpa_unavailable_reason, unavailable_method,
)
from .timing import Rate

TOKENS_PER_BATCH = 16384  # the FlashAttention-2/3 papers' grid: batch = 16k tokens // N

METHODS = (BASELINE,) + OURS + PEERS
RATE = Rate("tflops", "TFLOPS",
            "TFLOPS = 4*D*B*Hq*(score entries computed) / median time: Nq*Nk without a mask; causal with Nq == Nk "
            "half of N^2 (the FlashAttention papers' count); bottom-right causal with Nq < Nk exactly the "
            "Nq*Nk - Nq*(Nq-1)/2 entries it keeps.")
INPUTS_TEXT = ("Every method gets the same fresh inputs (torch.randn: query (B, Hq, Nq, D), key and value "
               "(B, Hkv, Nk, D)). SDPA gets enable_gqa where Hq > Hkv, and our bottom-right causal mask as "
               "is_causal where Nq == Nk (its top-left mask is then the same), else as causal_lower_right(Nq, Nk), "
               "which torch runs natively on SDPA's flash backend and hands the others as a materialised mask.")
CHECKED = f"batch 0, query heads 0-{CHECK_HEADS - 1}"


def score_entries(seqlen_q: int, seqlen_k: int, causal: bool) -> float:
    if not causal:
        return seqlen_q * seqlen_k
    if seqlen_q == seqlen_k:
        return seqlen_q * seqlen_k / 2  # the papers' count (N/2 fewer than the mask keeps): tables read against theirs
    if seqlen_q < seqlen_k:  # bottom-right: row i keeps Nk - Nq + i + 1 keys
        return seqlen_q * seqlen_k - seqlen_q * (seqlen_q - 1) / 2
    return seqlen_k * (seqlen_k + 1) / 2  # the first Nq - Nk rows keep no key


@dataclass(frozen=True)
class Shape:
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    causal: bool
    dtype: str
    model: str = ""  # the model grid's name for the row

    @property
    def work(self) -> float:
        """FLOPs: two matmuls of 2*D per score entry computed, per query head (RATE says which entries count)."""
        return 4.0 * self.head_dim * self.batch * self.heads_q * score_entries(self.seqlen_q, self.seqlen_k,
                                                                                self.causal)

    @property
    def label(self) -> str:
        heads = f"{self.heads_q}/{self.heads_kv}" if self.heads_q != self.heads_kv else f"{self.heads_q}"
        tokens = f"{self.seqlen_q}/{self.seqlen_k}" if self.seqlen_q != self.seqlen_k else f"{self.seqlen_q}"
        mask = "causal" if self.causal else "no mask"
        return f"{self.model + ' ' if self.model else ''}D={self.head_dim} B={self.batch} H={heads} N={tokens} {mask}"


@dataclass(frozen=True)
class PrefillAxes:
    """The seed and paper grids: batch TOKENS_PER_BATCH // tokens and heads hidden // head_dim, as in the original
    repo and the FlashAttention-2/3 papers, unless `batch` / `heads` (query/key head pairs) fix them."""

    head_dims: tuple[int, ...]
    tokens: tuple[int, ...]
    hidden: int
    batch: int | None = None
    heads: tuple[tuple[int, int], ...] | None = None
    masks: tuple[bool, ...] = (False,)

    def shapes(self, dtype: str) -> list[Shape]:
        return [Shape(self.batch or max(1, TOKENS_PER_BATCH // tokens), heads_q, heads_kv, tokens, tokens, head_dim,
                      causal, dtype)
                for causal in self.masks for head_dim in self.head_dims
                for heads_q, heads_kv in (self.heads or ((max(1, self.hidden // head_dim),) * 2,))
                for tokens in self.tokens]

    @property
    def description(self) -> str:
        batch = f"batch {self.batch}" if self.batch else f"batch {TOKENS_PER_BATCH} // N"
        heads = ("heads " + ", ".join(f"{q}/{kv}" for q, kv in self.heads) if self.heads
                 else f"heads {self.hidden} // head_dim (hidden {self.hidden})")
        return f"Rows: {batch}, {heads}."


@dataclass(frozen=True)
class ModelAxes:
    """Prefill shapes that models send: each model's causal prefill of each of `tokens` (batch
    tokens_per_batch // tokens, at least 1); the first model's chunked prefill, `chunk` query rows against each of
    `chunk_keys` keys (batch 1, bottom-right causal); one row of the first model without a mask."""

    models: tuple[tuple[str, int, int, int], ...]  # name, query heads, key/value heads, head_dim
    tokens: tuple[int, ...]
    chunk: int
    chunk_keys: tuple[int, ...]
    unmasked_tokens: int
    tokens_per_batch: int = TOKENS_PER_BATCH

    def shapes(self, dtype: str) -> list[Shape]:
        def batch(tokens: int) -> int:
            return max(1, self.tokens_per_batch // tokens)

        name, heads_q, heads_kv, head_dim = self.models[0]
        return ([Shape(batch(tokens), hq, hkv, tokens, tokens, d, True, dtype, model)
                 for model, hq, hkv, d in self.models for tokens in self.tokens]
                + [Shape(1, heads_q, heads_kv, self.chunk, keys, head_dim, True, dtype, f"{name} chunked")
                   for keys in self.chunk_keys]
                + [Shape(batch(self.unmasked_tokens), heads_q, heads_kv, self.unmasked_tokens, self.unmasked_tokens,
                         head_dim, False, dtype, name)])

    @property
    def description(self) -> str:
        name = self.models[0][0]
        return (f"Each row has the attention shape (query heads / key-value heads, head_dim) of the model it names, "
                f"nothing else of it: each model's causal prefill of {_list(self.tokens)} tokens (batch "
                f"{self.tokens_per_batch} // tokens, at least 1); {name}'s chunked prefill, {self.chunk} new query "
                f"rows against {_list(self.chunk_keys)} keys (bottom-right causal, batch 1); one {name} row without "
                f"a mask ({self.unmasked_tokens} tokens).")


def _list(numbers: tuple[int, ...]) -> str:
    return ", ".join(map(str, numbers))


@dataclass
class Inputs:
    query: torch.Tensor  # (B, Hq, Nq, D)
    key: torch.Tensor  # (B, Hkv, Nk, D)
    value: torch.Tensor
    causal: bool


def make_inputs(shape: Shape, device: torch.device) -> Inputs:
    query, key, value = random_tensors(
        device, shape.dtype, (shape.batch, shape.heads_q, shape.seqlen_q, shape.head_dim),
        *[(shape.batch, shape.heads_kv, shape.seqlen_k, shape.head_dim)] * 2)
    return Inputs(query, key, value, shape.causal)


def reference(inputs: Inputs) -> Reference:
    query, key, value = query_heads(inputs.query[:1], inputs.key[:1], inputs.value[:1], CHECK_HEADS)
    return Reference.of_slices([(query, key, value, inputs.causal, lambda output: output[:1, :CHECK_HEADS])])


def make_method(name: str) -> Method:
    import flash_attention

    if name in (BASELINE, "triton", "cuda"):
        backend = "naive" if name == BASELINE else name
        return Method(name, lambda x: flash_attention.attention(x.query, x.key, x.value, causal=x.causal,
                                                                backend=backend),
                      lambda x: backend_unavailable_reason(backend, x.query))
    if name in ("cuda_sm80", "cuda_sm90"):
        family = name.split("_")[1]

        def run(x: Inputs):
            from flash_attention import cuda  # imported once the backend has said that it runs here

            return cuda.attention(x.query, x.key, x.value, causal=x.causal, kernel_family=family)

        return Method(name, run, lambda x: backend_unavailable_reason("cuda", x.query))
    if name in SDPA_BACKENDS:
        return Method(name, lambda x: sdpa(name, x.query, x.key, x.value, x.causal),
                      lambda x: sdpa_unavailable_reason(name, x.query))
    if name == "fa4":
        _, reason = fa4_function("flash_attn_func")
        if reason is not None:
            return unavailable_method(name, reason)
        return Method(name, lambda x: fa4_dense(x.query, x.key, x.value, x.causal),
                      lambda x: needs_cuda("FlashAttention-4", x.query))
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
