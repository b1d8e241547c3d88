"""Hugging Face transformers: one call puts a model's attention layers on this library's kernels.

    import flash_attention.integrations.transformers as fa_hf
    name = fa_hf.register()                       # "fa_kernels"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation=name)
    model.generate(...)                           # prefill and decode, dynamic or static cache

transformers (>= 5.4: the mask interface's q_length/q_offset signature) calls the registered attention function with
query (B, Hq, Nq, D) and the layer's keys/values (B, Hkv, Nk, D), GQA unexpanded, the new queries being the last rows
of the keys: exactly `flash_attention.attention`'s bottom-right causal mask. What the kernels do not compute is
refused with an error that names it, never approximated:

- A mask that is not the plain causal (or bidirectional) pattern over the cached keys, other than padding: packed
  sequences, a sliding window shorter than the keys, a model's own mask (image tokens, prefix-LM), a padding mask
  with holes. The registered mask function checks HF's own boolean mask against the plain pattern, once per forward:
  eagerly with a host synchronisation, as HF's FlashAttention path does; under torch.compile with a device-side
  assert instead, which stops the program (a padded batch included: its key ranges would need that check too).
- Attention dropout while training, a logit softcap, attention sinks, returned attention weights.

The mask function hands the attention function one of:
- None: every key of the layer is visible (bottom-right causal): `flash_attention.attention`;
- for a static cache whose tail is not filled yet, the count of keys each sequence holds as an int32 (B, 1, 1, 1)
  tensor (4-D, because transformers passes a 4-D mask on as already prepared: `generate` makes the static cache's
  masks once, ahead of the forward): `flash_attention.attention_with_kvcache` on the static cache's tensors;
- for a padded batch (eager only), each sequence's real keys as an int32 (B, 1, 1, 3) tensor: [start, end) of its
  padded row (left or right padding: one run of real tokens) and the keys the layer holds (the queries are the last
  rows of those; a static cache holds fewer than its length): `flash_attention.attention_varlen` over the padded rows,
  each cut into its leading padding, its real tokens and its trailing padding (the padding rows attend among
  themselves, finite and unused, as HF's own FlashAttention path leaves them unused). K/V are copied into packed rows
  on each call, as HF's FlashAttention path gathers them.
"""

from __future__ import annotations

import functools

import torch

from .. import _check_backend_name, attention, attention_varlen, attention_with_kvcache

# transformers treats every attention implementation whose name contains "flash" as its own FlashAttention path
# (`is_flash_attention_requested` is a substring test) and would apply that path's rules to these kernels.
DEFAULT_NAME = "fa_kernels"

_UNSUPPORTED_MASK = (
    "the attention mask is not the plain {pattern} pattern over the layer's keys{cause}; this attention "
    "implementation runs that pattern, and padded batches (one run of real tokens per row) outside torch.compile, "
    "where flash_attention.attention_varlen takes them; use attn_implementation='sdpa' for this batch"
)


def register(name: str = DEFAULT_NAME, *, backend: str = "auto") -> str:
    """Register this library's attention and mask functions with transformers under `name`; returns `name`, to pass as
    `attn_implementation=` to `from_pretrained` or to `model.set_attn_implementation`. `backend` is the kernel backend
    every call uses ("auto", "cuda", "triton" or "naive"). Registering again under the same name replaces it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if "flash" in name:
        raise ValueError(f"name must not contain 'flash' (transformers would treat {name!r} as its own "
                         f"FlashAttention implementation), got {name!r}")
    _check_backend_name(backend)
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as error:
        raise ImportError("flash_attention.integrations.transformers needs transformers >= 5.4: "
                          "pip install -e '.[hf]'") from error
    AttentionInterface.register(name, functools.partial(attention_forward, backend=backend))
    AttentionMaskInterface.register(name, key_lengths_mask)
    return name


def _refuse(setting: str, reason: str):
    raise NotImplementedError(f"flash_attention's transformers attention: {setting} is not supported: {reason}")


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, *, backend: str = "auto", dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None, softcap: float | None = None,
                      s_aux: torch.Tensor | None = None, output_attentions: bool = False, **kwargs):
    """transformers' attention-function contract: returns (output (B, Nq, Hq, D), None)."""
    if dropout:
        _refuse(f"attention dropout {dropout}", "the kernels have no dropout; call model.eval() or set the config's "
                "attention_dropout to 0")
    if softcap is not None:
        _refuse(f"softcap={softcap}", "the kernels have no logit softcapping (the config's attn_logit_softcapping)")
    if s_aux is not None or kwargs.get("sinks") is not None:
        _refuse("attention sinks", "the kernels have no sink logits")
    if output_attentions:
        _refuse("output_attentions=True", "the kernels never form the attention weights")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None:
        out = attention(query, key, value, causal=causal, softmax_scale=scaling, backend=backend)
    elif _is_key_counts(attention_mask, query.shape[0]):
        out = attention_with_kvcache(query, key, value, cache_seqlens=attention_mask.view(-1), causal=causal,
                                     softmax_scale=scaling, backend=backend)
    elif _is_key_ranges(attention_mask, query.shape[0]):
        return _padded_attention(query, key, value, attention_mask, causal=causal, scaling=scaling,
                                 backend=backend), None
    else:
        raise TypeError(
            "attention_mask must be None, or the int32 (batch, 1, 1, 1) key counts or (batch, 1, 1, 3) key ranges "
            f"that this integration's mask function makes, got {_describe_mask(attention_mask)}; the model built its "
            "mask without transformers' AttentionMaskInterface, which this attention implementation needs")
    # The kernels write out in query's memory layout; HF's projections make (B, N, H, D) storage, so this transpose
    # is the contiguous tensor the model reshapes next.
    return out.transpose(1, 2), None


def _is_key_counts(mask, batch: int) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dtype == torch.int32 and tuple(mask.shape) == (batch, 1, 1, 1)


def _is_key_ranges(mask, batch: int) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dtype == torch.int32 and tuple(mask.shape) == (batch, 1, 1, 3)


def _padded_attention(query, key, value, key_ranges, *, causal: bool, scaling, backend: str) -> torch.Tensor:
    """A padded batch through attention_varlen: row b of the padded keys is cut into [0, start), [start, end) and
    [end, seqlen_k), its queries (the last seqlen_q of the keys held) at the same positions, so each real run attends
    only to itself (bottom-right causal inside it: its queries and keys end together). Returns (B, Nq, Hq, D)."""
    batch, heads_q, seqlen_q, head_dim = query.shape
    seqlen_k = key.shape[2]
    starts, ends, held = key_ranges[:, 0, 0, 0], key_ranges[:, 0, 0, 1], key_ranges[:, 0, 0, 2]
    first_query = held - seqlen_q  # the key position of query row 0

    def offsets(begin, end, length):
        base = torch.arange(batch, device=begin.device, dtype=torch.int32) * length
        cuts = torch.stack([base, base + begin, base + end], dim=1).flatten()
        return torch.cat([cuts, cuts.new_full((1,), batch * length)])

    cu_seqlens_q = offsets((starts - first_query).clamp(0, seqlen_q), (ends - first_query).clamp(0, seqlen_q),
                           seqlen_q)
    cu_seqlens_k = offsets(starts, ends, seqlen_k)

    def packed(tensor):  # (B, H, N, D) -> (B * N, H, D): a view of HF's (B, N, H, D) projections, a copy of a cache
        return tensor.transpose(1, 2).reshape(-1, tensor.shape[1], tensor.shape[3])

    out = attention_varlen(packed(query), packed(key), packed(value), cu_seqlens_q, cu_seqlens_k, seqlen_q, seqlen_k,
                           causal=causal, softmax_scale=scaling, backend=backend)
    return out.view(batch, seqlen_q, heads_q, head_dim)


def _describe_mask(mask) -> str:
    if isinstance(mask, torch.Tensor):
        return f"a {mask.dtype} tensor of shape {tuple(mask.shape)}"
    return type(mask).__name__


def key_lengths_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                     mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs):
    """transformers' mask-function contract: None when the layer's `kv_length` keys are all visible (bottom-right
    causal, or bidirectional), else the int32 (batch, 1, 1, 1) count of keys each sequence holds (a static cache's
    filled part). Refuses any other mask (see the module's docstring)."""
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

    mask_function = causal_mask_function if mask_function is None else mask_function
    causal = mask_function is not bidirectional_mask_function
    # Causal: the last query sits at absolute position q_offset + q_length - 1 and the layer's keys start at
    # kv_offset, so the keys up to it are the ones held (a static cache's later slots are empty).
    keys_held = q_offset + q_length - kv_offset if causal else kv_length
    plain_function = mask_function is causal_mask_function or mask_function is bidirectional_mask_function
    if attention_mask is not None or not plain_function:
        key_ranges = _check_plain(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
                                  causal, keys_held, plain_function, kwargs)
        if key_ranges is not None:
            return key_ranges
    if isinstance(keys_held, int) and keys_held == kv_length:
        return None
    device = kwargs.get("device", attention_mask.device if attention_mask is not None else None)
    if isinstance(keys_held, torch.Tensor):
        return keys_held.to(device=device, dtype=torch.int32).reshape(1, 1, 1, 1).expand(batch_size, 1, 1, 1).clone()
    return torch.full((batch_size, 1, 1, 1), keys_held, dtype=torch.int32, device=device)


def _check_plain(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask, causal,
                 keys_held, plain_function, kwargs):
    """None if HF's mask equals the plain pattern over keys_held keys; in eager mode the key ranges of a padded batch
    (see _padding_ranges); else raise (eager) or assert on the device (compiling)."""
    device = kwargs.get("device", attention_mask.device if attention_mask is not None else "cpu")
    key_index = torch.arange(kv_length, device=device)
    if plain_function:
        # Only the 2D padding mask can deviate: compare its slice of the layer's keys, (batch, kv_length), indexed as
        # HF's sdpa_mask indexes it, rather than the full (batch, 1, q_length, kv_length) mask.
        from transformers.masking_utils import prepare_padding_mask

        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)[:, kv_offset:kv_offset + kv_length]
        padding = padding.to(device=device, dtype=torch.bool)
        expected = (key_index < keys_held).expand(batch_size, kv_length)
        cause = (" (the attention_mask pads some sequences: a padded batch, which runs outside torch.compile only)"
                 if torch.compiler.is_compiling() else
                 " (the attention_mask's real tokens are not one run per row, as padding would make them)")
    else:
        from transformers.masking_utils import sdpa_mask

        sdpa_kwargs = {k: v for k, v in kwargs.items() if k not in ("allow_is_causal_skip", "device")}
        padding = sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                            kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                            allow_is_causal_skip=False, device=device, **sdpa_kwargs)
        query_index = torch.arange(q_length, device=device)[:, None]
        if causal:
            visible = key_index[None, :] <= query_index + (keys_held - q_length)
        else:
            visible = (key_index[None, :] < keys_held).expand(q_length, kv_length)
        expected = visible.expand(batch_size, 1, q_length, kv_length)
        cause = (" (a padded batch, packed sequences, a sliding window shorter than the keys, or a mask the model "
                 "adds)")
    pattern = "causal" if causal else "bidirectional"
    message = _UNSUPPORTED_MASK.format(pattern=pattern, cause=cause)
    same = (padding == expected).all()
    if torch.compiler.is_compiling():
        torch._assert_async(same, message)
    elif not bool(same):
        key_ranges = _padding_ranges(padding, keys_held) if plain_function else None
        if key_ranges is None:
            raise NotImplementedError(message)
        return key_ranges
    return None


def _padding_ranges(padding: torch.Tensor, keys_held) -> torch.Tensor | None:
    """[start, end) of each row's real keys and the keys held, as int32 (B, 1, 1, 3), if every row's real keys
    (within the keys held) are one run, as left or right padding makes them; else None. Reads the mask on the host
    (eager mode only)."""
    key_index = torch.arange(padding.shape[1], device=padding.device)
    real = padding & (key_index < keys_held)
    counts = real.sum(dim=1)
    starts = torch.where(counts > 0, real.int().argmax(dim=1), 0)
    ends = starts + counts
    inside = (key_index[None, :] >= starts[:, None]) & (key_index[None, :] < ends[:, None])
    if not bool((inside == real).all()):
        return None
    held = torch.as_tensor(keys_held, device=starts.device).expand_as(starts)
    return torch.stack([starts, ends, held], dim=1).to(torch.int32).view(-1, 1, 1, 3)
