"""flash_attention.integrations.transformers: tiny randomly initialised Llama-, Qwen2- and Mistral-style models (no
downloads) give the logits of the same model on transformers' `eager` attention, within a tolerance derived from
`sdpa`'s own distance to `eager`, in prefill, in teacher-forced decoding with dynamic and static caches, and through
`generate`; what the kernels cannot compute is refused with an error that names it.

Without a GPU the models run on CPU tensors (naive, and the Triton kernel under the interpreter); with one, on CUDA
tensors for every kernel backend.
"""

from __future__ import annotations

import functools
import inspect
import pathlib
import subprocess
import sys

import pytest
import torch

import flash_attention.integrations.transformers as fa_hf
from conftest import DEVICE, HAS_GPU, KERNEL_BACKENDS

ROOT = pathlib.Path(__file__).resolve().parent.parent

transformers = pytest.importorskip("transformers", minversion="5.4")

MODEL_BACKENDS = KERNEL_BACKENDS if HAS_GPU else KERNEL_BACKENDS + ["naive"]
DTYPE = torch.bfloat16
PROMPT, NEW_TOKENS = 16, 8

# hidden 256 over 4 query heads: head_dim 64, and 2 K/V heads (GQA groups of 2), as in the models named.
_COMMON = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256)
FAMILIES = {
    "llama": lambda **extra: transformers.LlamaConfig(**_COMMON, **extra),
    "qwen2": lambda **extra: transformers.Qwen2Config(**_COMMON, **extra),  # biased q/k/v projections
    "mistral": lambda **extra: transformers.MistralConfig(**{"sliding_window": 4096, **_COMMON, **extra}),
}


# How the models' forward names its cache argument: `cache` in transformers 5.24 (where `past_key_values` is
# deprecated), `past_key_values` in older 5.x.
_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters \
    else "past_key_values"


@functools.cache
def _registered(backend: str) -> str:
    return fa_hf.register(f"fa_kernels_{backend}", backend=backend)


def _model(family: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    model_class = transformers.AutoModelForCausalLM.from_config
    return model_class(FAMILIES[family](**extra)).to(device=DEVICE, dtype=DTYPE).eval()


def _tokens(batch: int = 2, length: int = PROMPT + NEW_TOKENS) -> torch.Tensor:
    return torch.randint(0, _COMMON["vocab_size"], (batch, length), device=DEVICE)


@pytest.fixture(params=MODEL_BACKENDS)
def implementation(request):
    return _registered(request.param)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls that reach flash_attention's entry points, so a test sees the model used them."""
    counts = {"attention": 0, "attention_with_kvcache": 0, "attention_varlen": 0}
    for entry in counts:
        original = getattr(fa_hf, entry)

        def counted(*args, _original=original, _entry=entry, **kwargs):
            counts[_entry] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fa_hf, entry, counted)
    return counts


def _logits(model, implementation, tokens, **kwargs) -> torch.Tensor:
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(tokens, **kwargs).logits.float()


def _decode_logits(model, implementation, tokens, cache: str, forward=None) -> torch.Tensor:
    """Prefill the first PROMPT tokens into a fresh cache, then feed the rest one at a time (teacher forcing): the
    last-position logits of every step, (steps, batch, vocab)."""
    model.set_attn_implementation(implementation)
    config = model.config
    if cache == "static":
        past = transformers.StaticCache(config=config, max_cache_len=tokens.shape[1] + 8)
    else:
        past = transformers.DynamicCache(config=config)
    forward = forward or model
    steps = []
    with torch.no_grad():
        out = model(tokens[:, :PROMPT], **{_CACHE_ARGUMENT: past}, use_cache=True)
        steps.append(out.logits[:, -1].float())
        for position in range(PROMPT, tokens.shape[1]):
            positions = torch.full((tokens.shape[0], 1), position, device=tokens.device)
            out = forward(tokens[:, position:position + 1], **{_CACHE_ARGUMENT: past}, use_cache=True,
                          position_ids=positions)
            steps.append(out.logits[:, -1].float())
    return torch.stack(steps)


def assert_logits_close(ours, eager, sdpa, *, multiple: float = 3.0):
    """Ours against eager within `multiple` x sdpa's distance to eager, plus two bf16 units at the logits' scale
    (sdpa and eager can round the same way, making their distance zero)."""
    assert ours.shape == eager.shape
    assert ours.isfinite().all(), "logits have NaN or inf"
    floor = 2 * torch.finfo(DTYPE).eps * eager.abs().max().item()
    allowed = multiple * (sdpa - eager).abs().max().item() + floor
    error = (ours - eager).abs().max().item()
    assert error <= allowed, f"max |ours - eager| = {error:.3g} > allowed {allowed:.3g}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_logits(family, implementation, kernel_calls):
    model, tokens = _model(family), _tokens()
    ours = _logits(model, implementation, tokens)
    assert kernel_calls["attention"] == model.config.num_hidden_layers
    assert_logits_close(ours, _logits(model, "eager", tokens), _logits(model, "sdpa", tokens))


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_teacher_forced_decode_logits(family, cache, implementation, kernel_calls):
    model, tokens = _model(family), _tokens()
    ours = _decode_logits(model, implementation, tokens, cache)
    # A static cache's unfilled tail makes every call a KV-cache call with the key counts; a dynamic cache holds
    # exactly the keys, so every call is plain bottom-right causal attention.
    entry = "attention_with_kvcache" if cache == "static" else "attention"
    assert kernel_calls[entry] == model.config.num_hidden_layers * (NEW_TOKENS + 1)
    eager = _decode_logits(model, "eager", tokens, cache)
    assert_logits_close(ours, eager, _decode_logits(model, "sdpa", tokens, cache))


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_matches_eager_on_its_own_tokens(cache, implementation):
    """generate() (prefill, then decode steps on HF's cache) scores each token as the eager model scores the whole
    generated sequence in one forward."""
    model, prompt = _model("llama"), _tokens(length=PROMPT)
    model.set_attn_implementation(implementation)
    mask = torch.ones_like(prompt)
    result = model.generate(prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                            cache_implementation=cache, output_logits=True, return_dict_in_generate=True,
                            pad_token_id=0)
    ours = torch.stack(result.logits).float()  # (NEW_TOKENS, batch, vocab)
    sequence = result.sequences
    assert sequence.shape == (prompt.shape[0], PROMPT + NEW_TOKENS)

    def scored(implementation_name):
        return _logits(model, implementation_name, sequence[:, :-1])[:, PROMPT - 1:].transpose(0, 1)

    assert_logits_close(ours, scored("eager"), scored("sdpa"))


def test_batched_prompts_of_equal_length_pass_with_their_mask(implementation):
    model, tokens = _model("qwen2"), _tokens(batch=3)
    mask = torch.ones_like(tokens)
    ours = _logits(model, implementation, tokens, attention_mask=mask)
    assert_logits_close(ours, _logits(model, "eager", tokens, attention_mask=mask),
                        _logits(model, "sdpa", tokens, attention_mask=mask))


def _padded(tokens, side: str) -> torch.Tensor:
    """A mask that pads the prompts of a batch to one length: row b loses 3 * b tokens on `side`."""
    mask = torch.ones_like(tokens)
    for b in range(tokens.shape[0]):
        if side == "left":
            mask[b, :3 * b] = 0
        else:
            mask[b, tokens.shape[1] - 3 * b:] = 0
    return mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_prefill_matches_eager_on_real_tokens(side, implementation, kernel_calls):
    """Prompts of unequal length padded to one: every layer runs attention_varlen over the padded rows, and the
    logits at real tokens are eager's."""
    model, tokens = _model("llama"), _tokens(batch=3, length=PROMPT)
    mask = _padded(tokens, side)
    ours = _logits(model, implementation, tokens, attention_mask=mask)
    assert kernel_calls["attention_varlen"] == model.config.num_hidden_layers
    real = mask.bool()
    assert_logits_close(ours[real], _logits(model, "eager", tokens, attention_mask=mask)[real],
                        _logits(model, "sdpa", tokens, attention_mask=mask)[real])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_padded_batch_generate_matches_eager(cache, implementation):
    """generate() on left-padded prompts (prefill and decode steps through attention_varlen) scores each token as the
    eager model scores the padded generated sequence in one forward. On a GPU transformers compiles static-cache
    decode steps unless told not to, and a padded batch runs in eager mode only."""
    model, prompt = _model("llama"), _tokens(batch=3, length=PROMPT)
    mask = _padded(prompt, "left")
    model.set_attn_implementation(implementation)
    result = model.generate(prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                            cache_implementation=cache, output_logits=True, return_dict_in_generate=True,
                            pad_token_id=0, disable_compile=True)
    ours = torch.stack(result.logits).float()  # (NEW_TOKENS, batch, vocab)
    sequence = result.sequences
    full_mask = torch.cat([mask, torch.ones_like(sequence[:, PROMPT:])], dim=1)

    def scored(implementation_name):
        logits = _logits(model, implementation_name, sequence[:, :-1], attention_mask=full_mask[:, :-1])
        return logits[:, PROMPT - 1:].transpose(0, 1)

    assert_logits_close(ours, scored("eager"), scored("sdpa"))


def test_a_padding_mask_with_holes_is_refused(implementation):
    model, tokens = _model("llama"), _tokens(length=PROMPT)
    mask = torch.ones_like(tokens)
    mask[0, 5] = 0  # a hole in the middle: not padding
    with pytest.raises(NotImplementedError, match="not one run per row"):
        _logits(model, implementation, tokens, attention_mask=mask)


def test_sliding_window_shorter_than_the_keys_is_refused(implementation):
    tokens = _tokens()
    with pytest.raises(NotImplementedError, match="sliding window"):
        _logits(_model("mistral", sliding_window=8), implementation, tokens)
    # A window as long as the sequence cuts nothing: the plain causal pattern, which runs.
    model = _model("mistral", sliding_window=tokens.shape[1])
    assert_logits_close(_logits(model, implementation, tokens), _logits(model, "eager", tokens),
                        _logits(model, "sdpa", tokens))


def test_packed_sequences_are_refused(implementation):
    model, tokens = _model("llama"), _tokens(batch=1)
    half = tokens.shape[1] // 2
    positions = torch.cat([torch.arange(half), torch.arange(tokens.shape[1] - half)]).to(DEVICE)[None]
    # transformers reads packing from position_ids only without a cache (a training forward).
    with pytest.raises(NotImplementedError, match="packed sequences"):
        _logits(model, implementation, tokens, position_ids=positions, use_cache=False)


def test_training_dropout_is_refused(implementation):
    model = _model("llama", attention_dropout=0.1).train()
    model.set_attn_implementation(implementation)
    with pytest.raises(NotImplementedError, match="dropout"):
        model(_tokens())


@pytest.mark.parametrize("setting, kwargs", [
    ("softcap", {"softcap": 50.0}),
    ("sinks", {"s_aux": torch.zeros(4)}),
    ("output_attentions", {"output_attentions": True}),
])
def test_features_the_kernels_lack_are_refused(setting, kwargs):
    query = torch.randn(1, 4, 3, 64, device=DEVICE, dtype=DTYPE)
    key = torch.randn(1, 2, 5, 64, device=DEVICE, dtype=DTYPE)
    with pytest.raises(NotImplementedError, match=setting):
        fa_hf.attention_forward(torch.nn.Module(), query, key, key.clone(), None, **kwargs)


def test_a_mask_not_made_by_the_integration_is_refused():
    query = torch.randn(1, 4, 3, 64, device=DEVICE, dtype=DTYPE)
    key = torch.randn(1, 2, 5, 64, device=DEVICE, dtype=DTYPE)
    foreign = torch.ones(1, 1, 3, 5, dtype=torch.bool, device=DEVICE)
    with pytest.raises(TypeError, match="AttentionMaskInterface"):
        fa_hf.attention_forward(torch.nn.Module(), query, key, key.clone(), foreign)


def test_compiled_static_cache_decoding(implementation):
    """torch.compile(fullgraph=True) of the model's forward over static-cache decode steps (the graph transformers
    compiles for generation). Inductor on the GPU; on CPU the aot_eager backend traces the same graph without a C++
    toolchain."""
    model, tokens = _model("llama"), _tokens()
    compiled = torch.compile(model.forward, fullgraph=True, backend="inductor" if HAS_GPU else "aot_eager")
    ours = _decode_logits(model, implementation, tokens, "static", forward=compiled)
    eager = _decode_logits(model, "eager", tokens, "static")
    assert_logits_close(ours, eager, _decode_logits(model, "sdpa", tokens, "static"))


@pytest.mark.skipif(HAS_GPU, reason="a device-side assert would end the CUDA context of the rest of the suite")
def test_compiled_padded_batch_stops_on_the_device_assert():
    model, tokens = _model("llama"), _tokens(length=PROMPT)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    model.set_attn_implementation(_registered("naive"))
    compiled = torch.compile(model.forward, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="padded batch"), torch.no_grad():
        compiled(tokens, attention_mask=mask)


def test_register_checks_its_arguments():
    with pytest.raises(ValueError, match="flash"):
        fa_hf.register("my_flash_kernels")
    with pytest.raises(ValueError, match="backend"):
        fa_hf.register(backend="tensorrt")
    with pytest.raises(TypeError, match="name"):
        fa_hf.register(name=3)
    assert fa_hf.register() == fa_hf.DEFAULT_NAME
    assert fa_hf.DEFAULT_NAME in transformers.AttentionInterface._global_mapping


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, flash_attention; assert 'transformers' not in sys.modules, 'transformers was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_example_runs():
    example = ROOT / "examples" / "generate_with_transformers.py"
    arguments = ["--prompt-tokens", "16", "--new-tokens", "3", "--backend", "auto"]
    result = subprocess.run([sys.executable, str(example), *arguments], check=True, capture_output=True, text=True)
    assert "tokens agreeing with sdpa" in result.stdout
