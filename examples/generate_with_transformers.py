"""Generate text with a Hugging Face transformers model whose attention layers run on this library's kernels.

    python examples/generate_with_transformers.py                   # a small randomly initialised Llama, no download
    python examples/generate_with_transformers.py --model Qwen/Qwen2.5-0.5B-Instruct --prompt "The capital of France"

It registers the attention implementation, generates greedily with it and with transformers' `sdpa`, and prints both
outputs, how many tokens agree, and the time per generated token of each (wall clock, after one warm-up call). A
random model's logits are nearly flat, so two correct kernels' rounding picks different tokens at near-ties within a
few steps; with trained weights the outputs agree (tests/test_transformers.py compares logits instead).
Needs `pip install -e ".[hf]"`; on a CPU the kernels' reference path (`naive`) runs.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

import flash_attention.integrations.transformers as fa_transformers


def random_llama(device, dtype):
    """A Llama-style model (GQA 16/4 heads, head_dim 64) with random weights, so the example needs no download."""
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                      num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                                      max_position_embeddings=4096)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype).eval(), None


def pretrained(path, device, dtype):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


def generate(model, implementation, input_ids, args):
    model.set_attn_implementation(implementation)
    kwargs = dict(attention_mask=torch.ones_like(input_ids), max_new_tokens=args.new_tokens, do_sample=False,
                  cache_implementation=args.cache, pad_token_id=model.config.eos_token_id or 0)
    # Warm-up with the same arguments: kernel builds, and the compilation transformers runs for a static cache, whose
    # shapes (its length) must be the timed call's.
    model.generate(input_ids, **kwargs)
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = model.generate(input_ids, **kwargs)
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    return tokens[:, input_ids.shape[1]:], (time.perf_counter() - start) / args.new_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a transformers checkpoint (name or path); default: a random Llama")
    parser.add_argument("--prompt", default="FlashAttention computes exact attention")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prompt length for the random model")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic")
    parser.add_argument("--backend", default="auto", help="auto, cuda, triton or naive")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16
    model, tokenizer = pretrained(args.model, device, dtype) if args.model else random_llama(device, dtype)
    if tokenizer is not None:
        input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(device)
    else:
        torch.manual_seed(1)
        input_ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens), device=device)

    name = fa_transformers.register(backend=args.backend)
    ours, ours_seconds = generate(model, name, input_ids, args)
    sdpa, sdpa_seconds = generate(model, "sdpa", input_ids, args)

    def show(tokens):
        return repr(tokenizer.decode(tokens[0])) if tokenizer is not None else tokens[0].tolist()

    print(f"{device} {torch.cuda.get_device_name() if device == 'cuda' else ''} {dtype}, prompt "
          f"{input_ids.shape[1]} tokens, {args.new_tokens} new, {args.cache} cache, backend {args.backend}")
    print(f"{name}: {show(ours)}")
    print(f"sdpa: {show(sdpa)}")
    agree = (ours == sdpa).float().mean().item()
    print(f"tokens agreeing with sdpa: {agree:.0%}; ms per token: {name} {ours_seconds * 1e3:.2f}, "
          f"sdpa {sdpa_seconds * 1e3:.2f}")


if __name__ == "__main__":
    main()
