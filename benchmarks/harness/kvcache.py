"""The KV-cache call, `flash_attention.attention_with_kvcache`: a few query rows against a long cache, contiguous or
paged (the decode grid)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch

from .checking import Reference, query_heads
from .methods import (
    DTYPES, SDPA_BACKENDS, Method, backend_unavailable_reason, fa4_dense, fa4_function, needs_cuda, random_tensors,
    sdpa, sdpa_unavailable_reason, unavailable_method,
)
from .timing import Rate

PAGE_SIZE = 64
MAX_KV_BYTES = 16 * 2**30  # shapes whose cache is larger are left out (they would not fit next to the copy buffer)

METHODS = ("triton", "cuda", "sdpa_flash", "sdpa_cudnn", "fa4")
RATE = Rate("tbps", "TB/s of K/V read",
            "TB/s = the cache's K/V bytes (B*Hkv*keys*D*2 elements, each counted once: what a kernel that reads "
            "each element once moves) / median time, set against a device-to-device copy measured in the same run.")
INPUTS_TEXT = ("Every sequence's cache is full (cache_seqlens = keys), so each method reads the same K/V and the "
               "peers, which take plain (B, H, N, D) tensors (SDPA with enable_gqa), compute the same function. "
               f"Paged rows time our kernels on a cache of {PAGE_SIZE}-key pages dealt in a random order; the peers "
               "take no page table.")
CHECKED = "batch 0, every query head"


@dataclass(frozen=True)
class Shape:
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    keys: int
    head_dim: int
    paged: bool
    causal: bool
    dtype: str

    @property
    def work(self) -> float:
        """Bytes of K/V read, each element once."""
        return 2 * self.batch * self.heads_kv * self.keys * self.head_dim * DTYPES[self.dtype].itemsize

    @property
    def label(self) -> str:
        return (f"B{self.batch} H{self.heads_q}/{self.heads_kv} Nq{self.seqlen_q} Nk{self.keys} D{self.head_dim}"
                f"{' paged' if self.paged else ''}{' causal' if self.causal else ''}")


@dataclass(frozen=True)
class DecodeAxes:
    batches: tuple[int, ...]
    keys: tuple[int, ...]
    heads: tuple[tuple[int, int], ...]
    query_lens: tuple[int, ...]
    head_dims: tuple[int, ...]
    paged: tuple[bool, ...] = (False, True)
    masks: tuple[bool, ...] = (False,)  # bottom-right causal matters only for more than one query row

    def shapes(self, dtype: str) -> list[Shape]:
        shapes = [Shape(batch, heads_q, heads_kv, seqlen_q, keys, head_dim, paged, causal, dtype)
                  for causal, head_dim, (heads_q, heads_kv), seqlen_q, batch, keys, paged in itertools.product(
                      self.masks, self.head_dims, self.heads, self.query_lens, self.batches, self.keys, self.paged)]
        return [shape for shape in shapes if shape.work <= MAX_KV_BYTES]

    @property
    def description(self) -> str:
        return f"Rows whose cache is larger than {MAX_KV_BYTES // 2**30} GiB are left out."


def contiguous_twin(shape: Shape, shapes: list[Shape]) -> Shape | None:
    """The contiguous row of a paged row's shape, where the run has it: the two read the same bytes."""
    twin = dataclasses.replace(shape, paged=False)
    return twin if shape.paged and twin in shapes else None


@dataclass
class Inputs:
    query: torch.Tensor  # (B, Hq, Nq, D)
    key: torch.Tensor  # the logical cache, (B, Hkv, N, D): what the peers read
    value: torch.Tensor
    key_cache: torch.Tensor  # what our kernels read: the same tensor, or its pages
    value_cache: torch.Tensor
    cache_seqlens: torch.Tensor
    block_table: torch.Tensor | None
    causal: bool


def make_inputs(shape: Shape, device: torch.device) -> Inputs:
    seqlens = torch.full((shape.batch,), shape.keys, dtype=torch.int32, device=device)
    query_size = (shape.batch, shape.heads_q, shape.seqlen_q, shape.head_dim)
    if not shape.paged:
        query, key, value = random_tensors(device, shape.dtype, query_size,
                                           *[(shape.batch, shape.heads_kv, shape.keys, shape.head_dim)] * 2)
        return Inputs(query, key, value, key, value, seqlens, None, shape.causal)
    blocks = math.ceil(shape.keys / PAGE_SIZE)
    query, *pages = random_tensors(device, shape.dtype, query_size,
                                   *[(shape.batch * blocks, shape.heads_kv, PAGE_SIZE, shape.head_dim)] * 2)
    order = torch.randperm(shape.batch * blocks, generator=torch.Generator().manual_seed(0))
    table = order.view(shape.batch, blocks).to(torch.int32).to(device)
    # The peers do not run on paged rows: the logical cache of batch 0 serves the correctness check only.
    key, value = (p[table[:1].long()].transpose(1, 2).flatten(2, 3)[:, :, :shape.keys] for p in pages)
    return Inputs(query, key, value, pages[0], pages[1], seqlens, table, shape.causal)


def reference(inputs: Inputs) -> Reference:
    query, key, value = query_heads(inputs.query[:1], inputs.key[:1], inputs.value[:1], inputs.query.shape[1])
    return Reference.of_slices([(query, key, value, inputs.causal, lambda output: output[:1])])


def _peer_unavailable_reason(inputs: Inputs) -> str | None:
    if inputs.block_table is not None:
        return "the peers are timed on plain (B, H, N, D) caches, not on paged ones"
    return None


def make_method(name: str) -> Method:
    import flash_attention

    if name in ("triton", "cuda"):
        def run(x: Inputs):
            return flash_attention.attention_with_kvcache(
                x.query, x.key_cache, x.value_cache, cache_seqlens=x.cache_seqlens, block_table=x.block_table,
                causal=x.causal, backend=name)

        return Method(name, run, lambda x: backend_unavailable_reason(name, x.query))
    if name in SDPA_BACKENDS:
        return Method(name, lambda x: sdpa(name, x.query, x.key, x.value, x.causal),
                      lambda x: _peer_unavailable_reason(x) or sdpa_unavailable_reason(name, x.query))
    if name == "fa4":
        _, reason = fa4_function("flash_attn_func")
        if reason is not None:
            return unavailable_method(name, reason)
        return Method(name, lambda x: fa4_dense(x.query, x.key, x.value, x.causal),
                      lambda x: _peer_unavailable_reason(x) or needs_cuda("FlashAttention-4", x.query))
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
