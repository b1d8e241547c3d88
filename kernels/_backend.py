"""The contract every backend module (flash_attention.naive, .triton, .cuda) meets, as a typing.Protocol.

`flash_attention.attention` and its siblings validate once, then call a backend's `run_*_validated` with the
validated sizes; the backend's own public calls (`attention`, `attention_with_kvcache`, `attention_varlen`) are the
same after their own validation (`_validation.*_entry_point`). Optional hooks, looked up with getattr:
`auto_eligible(query, causal, key) -> bool`, `kvcache_auto_eligible(query, key_cache, value_cache) -> bool` and
`varlen_auto_eligible(query, causal) -> bool` keep a backend that could run a call out of `backend="auto"` (where it
would be slower, or its kernel is not built); `varlen_unsupported_reason(query) -> str | None` and
`kvcache_unsupported_reason(query, key_cache, value_cache) -> str | None` say why it cannot run such a call.
Importing a backend builds and compiles nothing: kernels compile on first use.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class Backend(Protocol):
    def unavailable_reason(self, query: Optional[torch.Tensor] = None) -> Optional[str]:
        """None if the backend can run on `query`'s device (here, now), else a sentence saying why not."""

    def attention(self, query, key, value, *, causal=False, softmax_scale=None, return_lse=False, **options):
        """flash_attention.attention's contract; keyword options are the backend's research knobs, if any."""

    def run_validated(self, query, key, value, shape, *, causal, return_lse, **options):
        """`attention` after _validation.check_attention_args returned `shape`."""

    def attention_with_kvcache(self, query, key_cache, value_cache, **kwargs):
        """flash_attention.attention_with_kvcache's contract."""

    def run_kvcache_validated(self, query, key_cache, value_cache, shape, *, cache_seqlens, block_table, key, value,
                              causal, return_lse):
        """`attention_with_kvcache` after _validation.check_kvcache_args returned `shape`."""

    def attention_varlen(self, query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs):
        """flash_attention.attention_varlen's contract."""

    def run_varlen_validated(self, query, key, value, cu_seqlens_q, cu_seqlens_k, shape, *, causal, return_lse):
        """`attention_varlen` after _validation.check_varlen_args returned `shape`."""
