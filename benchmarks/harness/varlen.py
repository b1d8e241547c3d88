"""The packed variable-length call, `flash_attention.attention_varlen`: sequences of a mix of lengths packed into one
stream of about `tokens` rows, the same lengths for queries and keys (self-attention of a prefill or a packed
training batch). A mix of equal lengths is the dense batch of the same tokens: the row a ragged mix is read against."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .checking import CHECK_HEADS, Reference, query_heads
from .methods import (
    SDPA_BACKENDS, Method, backend_unavailable_reason, fa4_function, needs_cuda, random_tensors, sdpa,
    sdpa_unavailable_reason, unavailable_method,
)
from .timing import Rate

METHODS = ("triton", "cuda", "fa4", "sdpa_flash", "sdpa_cudnn")
RATE = Rate("tflops", "TFLOPS",
            "TFLOPS = sum over sequences of 4*Hq*L^2*D / median time, halved for causal (the paper grid's count).")
INPUTS_TEXT = ("Mixes: equal-N is tokens / N sequences of N, uniform-A-B lengths drawn uniformly from [A, B] until "
               "the tokens are used up, skewed-L-S one sequence of L and the rest of S. FlashAttention-4 runs its "
               "varlen call on the same packed tensors; SDPA runs only equal lengths, as the dense (B, H, N, D) "
               "batch of the same sequences (views, no copy).")
CHECKED = f"first and last sequence, query heads 0-{CHECK_HEADS - 1}"


def mix_lengths(mix: str, tokens: int) -> list[int]:
    """Sequence lengths of a mix, deterministic: 'equal-N' (tokens / N sequences of N), 'uniform-A-B' (lengths drawn
    uniformly from [A, B] until the tokens are used up), 'skewed-L-S' (one sequence of L, the rest of S)."""
    kind, _, sizes = mix.partition("-")
    numbers = [int(part) for part in sizes.split("-") if part]
    if kind == "equal":
        return [numbers[0]] * max(1, tokens // numbers[0])
    if kind == "uniform":
        generator, lengths = random.Random(0), []
        while sum(lengths) < tokens:
            lengths.append(generator.randint(numbers[0], numbers[1]))
        lengths[-1] -= sum(lengths) - tokens
        return [length for length in lengths if length > 0]
    if kind == "skewed":
        long, short = numbers
        return [long] + [short] * max(0, (tokens - long) // short)
    raise ValueError(f"unknown mix {mix!r} (equal-N, uniform-A-B, skewed-L-S)")


@dataclass(frozen=True)
class Shape:
    mix: str
    tokens: int
    heads_q: int
    heads_kv: int
    head_dim: int
    causal: bool
    dtype: str

    @property
    def lengths(self) -> list[int]:
        return mix_lengths(self.mix, self.tokens)

    @property
    def work(self) -> float:
        return sum(4 * self.heads_q * n * n * self.head_dim for n in self.lengths) / (2 if self.causal else 1)

    @property
    def label(self) -> str:
        return f"{self.mix} ({self.tokens} tokens) H{self.heads_q}/{self.heads_kv} D{self.head_dim}" + \
            (" causal" if self.causal else "")


@dataclass(frozen=True)
class VarlenAxes:
    mixes: tuple[str, ...]
    tokens: tuple[int, ...]
    heads: tuple[tuple[int, int], ...]
    head_dims: tuple[int, ...]
    masks: tuple[bool, ...] = (True,)

    def shapes(self, dtype: str) -> list[Shape]:
        return [Shape(mix, tokens, heads_q, heads_kv, head_dim, causal, dtype)
                for causal in self.masks for head_dim in self.head_dims for heads_q, heads_kv in self.heads
                for tokens in self.tokens for mix in self.mixes]

    @property
    def description(self) -> str:
        return (f"Rows: each mix packed into one stream of about {', '.join(map(str, self.tokens))} tokens, the same "
                f"lengths for queries and keys; the sequences column counts the sequences.")


def dense_twin(shape: Shape, shapes: list[Shape]) -> Shape | None:
    """The equal-length row of the same tokens, heads and mask that a mix is read against: of the run's equal mixes,
    the one of the longest sequences no longer than this mix's mean length; where every one is longer (a long
    sequence among many short ones, whose work the long one carries), the longest there is."""
    mean = shape.tokens / max(1, len(shape.lengths))
    candidates = [s for s in shapes if s.mix.startswith("equal-") and s.tokens == shape.tokens
                  and (s.heads_q, s.heads_kv, s.head_dim, s.causal) == (shape.heads_q, shape.heads_kv,
                                                                         shape.head_dim, shape.causal)]
    fitting = [s for s in candidates if s.lengths[0] <= mean] or candidates
    return max(fitting, key=lambda s: s.lengths[0]) if fitting else None


@dataclass
class Inputs:
    query: torch.Tensor  # (total, Hq, D)
    key: torch.Tensor  # (total, Hkv, D)
    value: torch.Tensor
    cu_seqlens: torch.Tensor  # int32 (B + 1,), for queries and keys alike
    max_seqlen: int
    lengths: list[int]
    causal: bool


def make_inputs(shape: Shape, device: torch.device) -> Inputs:
    lengths = shape.lengths
    total = sum(lengths)
    query, key, value = random_tensors(device, shape.dtype, (total, shape.heads_q, shape.head_dim),
                                       *[(total, shape.heads_kv, shape.head_dim)] * 2)
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=device)
    return Inputs(query, key, value, cu_seqlens, max(lengths), lengths, shape.causal)


def _as_dense(tensor: torch.Tensor) -> torch.Tensor:
    """Rows (total, H, D) of one sequence as (1, H, N, D)."""
    return tensor.transpose(0, 1)[None]


def reference(inputs: Inputs) -> Reference:
    offsets = inputs.cu_seqlens.tolist()
    slices = []
    for sequence in dict.fromkeys((0, len(inputs.lengths) - 1)):
        rows = slice(offsets[sequence], offsets[sequence + 1])
        query, key, value = query_heads(*(_as_dense(t[rows]) for t in (inputs.query, inputs.key, inputs.value)),
                                        CHECK_HEADS)
        slices.append((query, key, value, inputs.causal,
                       lambda output, rows=rows: _as_dense(output[rows, :CHECK_HEADS])))
    return Reference.of_slices(slices)


def _dense_views(inputs: Inputs):
    """An equal-length batch as (B, H, N, D) views of the packed tensors (no copy)."""
    batch, length = len(inputs.lengths), inputs.lengths[0]
    return tuple(t.view(batch, length, *t.shape[1:]).transpose(1, 2) for t in (inputs.query, inputs.key, inputs.value))


def _sdpa_unavailable_reason(name: str, inputs: Inputs) -> str | None:
    if len(set(inputs.lengths)) > 1:
        return "SDPA takes no packed batch: timed on equal lengths only, as the dense batch"
    return sdpa_unavailable_reason(name, inputs.query)


def make_method(name: str) -> Method:
    import flash_attention

    if name in ("triton", "cuda"):
        def run(x: Inputs):
            return flash_attention.attention_varlen(x.query, x.key, x.value, x.cu_seqlens, x.cu_seqlens, x.max_seqlen,
                                                    x.max_seqlen, causal=x.causal, backend=name)

        def unavailable(x: Inputs):
            reason = backend_unavailable_reason(name, x.query)
            if reason is None and not hasattr(getattr(flash_attention, name), "run_varlen_validated"):
                return f"the {name} backend has no varlen kernel yet"
            return reason

        return Method(name, run, unavailable)
    if name in SDPA_BACKENDS:
        def run_dense(x: Inputs):
            out = sdpa(name, *_dense_views(x), x.causal)
            return out.transpose(1, 2).flatten(0, 1)

        return Method(name, run_dense, lambda x: _sdpa_unavailable_reason(name, x))
    if name == "fa4":
        function, reason = fa4_function("flash_attn_varlen_func")
        if reason is not None:
            return unavailable_method(name, reason)

        def run_fa4(x: Inputs):
            result = function(x.query, x.key, x.value, cu_seqlens_q=x.cu_seqlens, cu_seqlens_k=x.cu_seqlens,
                              max_seqlen_q=x.max_seqlen, max_seqlen_k=x.max_seqlen, causal=x.causal)
            return result[0] if isinstance(result, tuple) else result

        return Method(name, run_fa4, lambda x: needs_cuda("FlashAttention-4", x.query))
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
