"""Hugging Face transformers: one call puts a model's attention layers on this library's kernels.

    import flash_attention.integrations.transformers as fa_hf
    name = fa_hf.register()                       # "fa_kernels"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation=name)
    model.generate(...)                           # prefill and decode, dynamic or static cache

transformers (>= 5.4: the mask interface's q_length/q_offset signature) calls the registered attention function with
query (B, Hq, Nq, D) and the layer's keys/values (B, Hkv, Nk, D), GQA unexpanded, the new queries being the last rows
of the keys: exactly `flash_attention.attention`'s bottom-right causal mask. What the kernels do not compute is
refused with an error that names it, never approximated:

- A mask that is not the plain causal (or bidirectional) pattern over the cached keys: a padded batch (it needs
  `attention_varlen`, not built yet), packed sequences, a sliding window shorter than the keys, a model's own mask
  (image tokens, prefix-LM). The registered mask function checks HF's own boolean mask against the plain pattern, once
  per forward: eagerly with a host synchronisation, as HF's FlashAttention path does; under torch.compile with a
  device-side assert instead, which stops the program.
- Attention dropout while training, a logit softcap, attention sinks, returned attention weights.

The mask function hands the attention function either None (every key of the layer is visible, bottom-right causal)
or, for a static cache whose tail is not filled yet, the count of keys each sequence holds as an int32 (B, 1, 1, 1)
tensor (4-D, because transformers passes a 4-D mask on as already prepared: `generate` makes the static cache's masks
once, ahead of the forward), which runs as `flash_attention.attention_with_kvcache` on the static cache's tensors.
"""

from __future__ import annotations

import functools

import torch

from .. import _check_backend_name, attention, attention_with_kvcache

# transformers treats every attention implementation whose name contains "flash" as its own FlashAttention path
# (`is_flash_attention_requested` is a substring test) and would apply that path's rules to these kernels.
DEFAULT_NAME = "fa_kernels"

_UNSUPPORTED_MASK = (
    "the attention mask is not the plain {pattern} pattern over the layer's keys{cause}; this attention "
    "implementation runs that pattern only. Padded batches need flash_attention.attention_varlen (not built yet): "
    "pass prompts of equal length, or use attn_implementation='sdpa' for this batch"
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
    else:
        raise TypeError(
            "attention_mask must be None or the int32 (batch, 1, 1, 1) key counts that this integration's mask "
            f"function makes, got {_describe_mask(attention_mask)}; the model built its mask without "
            "transformers' AttentionMaskInterface, which this attention implementation needs")
    # The kernels write out in query's memory layout; HF's projections make (B, N, H, D) storage, so this transpose
    # is the contiguous tensor the model reshapes next.
    return out.transpose(1, 2), None


def _is_key_counts(mask, batch: int) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dtype == torch.int32 and tuple(mask.shape) == (batch, 1, 1, 1)


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
        _check_plain(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask, causal,
                     keys_held, plain_function, kwargs)
    if isinstance(keys_held, int) and keys_held == kv_length:
        return None
    device = kwargs.get("device", attention_mask.device if attention_mask is not None else None)
    if isinstance(keys_held, torch.Tensor):
        return keys_held.to(device=device, dtype=torch.int32).reshape(1, 1, 1, 1).expand(batch_size, 1, 1, 1).clone()
    return torch.full((batch_size, 1, 1, 1), keys_held, dtype=torch.int32, device=device)


def _check_plain(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask, causal,
                 keys_held, plain_function, kwargs) -> None:
    """Raise (eager) or assert on the device (compiling) unless HF's mask equals the plain pattern over keys_held keys."""
    device = kwargs.get("device", attention_mask.device if attention_mask is not None else "cpu")
    key_index = torch.arange(kv_length, device=device)
    if plain_function:
        # Only the 2D padding mask can deviate: compare its slice of the layer's keys, (batch, kv_length), indexed as
        # HF's sdpa_mask indexes it, rather than the full (batch, 1, q_length, kv_length) mask.
        from transformers.masking_utils import prepare_padding_mask

        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)[:, kv_offset:kv_offset + kv_length]
        padding = padding.to(device=device, dtype=torch.bool)
        expected = (key_index < keys_held).expand(batch_size, kv_length)
        cause = " (the attention_mask pads some sequences: a padded batch)"
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
        raise NotImplementedError(message)
