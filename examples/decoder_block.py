"""A small decoder block using flash_attention the way a model does: a causal prefill of a batch of prompts of
different lengths (packed, through attention_varlen), then token-by-token decoding against a KV cache that the
attention call appends to in place (attention_with_kvcache). Each step is checked against PyTorch's own attention.

    python examples/decoder_block.py                       # GPU if there is one (auto picks the kernels), else CPU
    TRITON_INTERPRET=1 python examples/decoder_block.py --backend triton --steps 2   # the Triton kernel on CPU
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import flash_attention


class DecoderBlock(torch.nn.Module):
    """Pre-norm attention (GQA) + MLP, with a contiguous KV cache of `capacity` positions per sequence."""

    def __init__(self, hidden: int, heads_q: int, heads_kv: int, capacity: int, batch: int, backend: str):
        super().__init__()
        self.heads_q, self.heads_kv, self.head_dim = heads_q, heads_kv, hidden // heads_q
        self.backend = backend
        self.norm1, self.norm2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
        self.qkv = torch.nn.Linear(hidden, (heads_q + 2 * heads_kv) * self.head_dim, bias=False)
        self.out = torch.nn.Linear(hidden, hidden, bias=False)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, 4 * hidden), torch.nn.GELU(),
                                       torch.nn.Linear(4 * hidden, hidden))
        # (batch, capacity, heads_kv, head_dim) storage, as FlashAttention and vLLM keep it; the kernels take it as
        # a transposed view, no copy.
        self.register_buffer("k_cache", torch.zeros(batch, capacity, heads_kv, self.head_dim), persistent=False)
        self.register_buffer("v_cache", torch.zeros(batch, capacity, heads_kv, self.head_dim), persistent=False)

    def _split(self, x: torch.Tensor):
        q, k, v = self.qkv(self.norm1(x)).split(
            [self.heads_q * self.head_dim, self.heads_kv * self.head_dim, self.heads_kv * self.head_dim], dim=-1)
        return (q.unflatten(-1, (self.heads_q, self.head_dim)), k.unflatten(-1, (self.heads_kv, self.head_dim)),
                v.unflatten(-1, (self.heads_kv, self.head_dim)))

    def prefill(self, packed: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """packed (total, hidden): the prompts one after another. Fills the cache; returns (total, hidden)."""
        q, k, v = self._split(packed)
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                                  device=packed.device)
        attended = flash_attention.attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max(lengths), max(lengths),
                                                    causal=True, backend=self.backend)
        for b, (start, length) in enumerate(zip(cu_seqlens[:-1].tolist(), lengths)):
            self.k_cache[b, :length] = k[start:start + length]
            self.v_cache[b, :length] = v[start:start + length]
        x = packed + self.out(attended.flatten(-2))
        return x + self.mlp(self.norm2(x))

    def decode(self, x: torch.Tensor, cache_seqlens: torch.Tensor) -> torch.Tensor:
        """x (batch, 1, hidden): one new token per sequence; appends its K/V at cache_seqlens, then attends."""
        q, k, v = self._split(x)
        attended = flash_attention.attention_with_kvcache(
            q.transpose(1, 2), self.k_cache.transpose(1, 2), self.v_cache.transpose(1, 2), cache_seqlens=cache_seqlens,
            key=k.transpose(1, 2), value=v.transpose(1, 2), causal=True, backend=self.backend)
        x = x + self.out(attended.transpose(1, 2).flatten(-2))
        return x + self.mlp(self.norm2(x))


def reference_attention(block: DecoderBlock, b: int, length: int, q_last: torch.Tensor) -> torch.Tensor:
    """PyTorch's SDPA for sequence b's newest query against its first `length` cached keys (float32)."""
    keys = block.k_cache[b, :length].transpose(0, 1).float()
    values = block.v_cache[b, :length].transpose(0, 1).float()
    return F.scaled_dot_product_attention(q_last.transpose(0, 1).float(), keys, values, enable_gqa=True)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    torch.manual_seed(0)
    lengths = [37, 5, 64]
    block = DecoderBlock(hidden=256, heads_q=4, heads_kv=2, capacity=max(lengths) + args.steps, batch=len(lengths),
                         backend=args.backend).to(device=device, dtype=dtype).eval()
    with torch.inference_mode():
        prompts = torch.randn(sum(lengths), 256, device=device, dtype=dtype)
        hidden = block.prefill(prompts, lengths)
        # The prefill's attention again, sequence by sequence, by PyTorch (causal within each prompt).
        q, k, v = block._split(prompts)
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        packed = flash_attention.attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max(lengths), max(lengths),
                                                  causal=True, backend=args.backend)
        worst = 0.0
        for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            expected = F.scaled_dot_product_attention(*(t[start:end].transpose(0, 1).float() for t in (q, k, v)),
                                                      is_causal=True, enable_gqa=True)
            worst = max(worst, (packed[start:end].transpose(0, 1).float() - expected).abs().max().item())
        ends = torch.tensor(lengths, device=device).cumsum(0) - 1
        x = hidden[ends][:, None]  # each prompt's last position starts its decoding
        cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
        for _ in range(args.steps):
            q, _, _ = block._split(x)
            x = block.decode(x, cache_seqlens)
            cache_seqlens += 1
            # The step's attention again, from the cache it appended to, by PyTorch: the same up to rounding.
            for b in range(len(lengths)):
                expected = reference_attention(block, b, int(cache_seqlens[b]), q[b])
                ours = flash_attention.attention_with_kvcache(
                    q[b:b + 1].transpose(1, 2), block.k_cache[b:b + 1].transpose(1, 2),
                    block.v_cache[b:b + 1].transpose(1, 2), cache_seqlens=cache_seqlens[b:b + 1],
                    backend=args.backend)[0, :, 0]
                worst = max(worst, (ours.float() - expected).abs().max().item())
    tolerance = 4 * torch.finfo(dtype).eps
    print(f"device {device}, {dtype}, backend {args.backend}: prefill of {len(lengths)} packed prompts "
          f"({sum(lengths)} tokens), {args.steps} decode steps; max |attention - SDPA| {worst:.2e} "
          f"(tolerance {tolerance:.1e})")
    if worst > tolerance:
        raise SystemExit("attention differs from PyTorch's beyond the tolerance")


if __name__ == "__main__":
    main()
