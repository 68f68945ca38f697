#!/usr/bin/env python3
"""The PyTorch side of every comparison in BENCHMARKS.md: the workloads palm's own benchmarks run
(`cargo bench -p palm-bench`, `palm-gpu-bench`), written the way a PyTorch user would write them.

Needs only `pip install torch numpy` (in a virtual environment outside the repository; torch is
never a dependency of palm). Each result is one JSON line on stdout, with the field names that
`palm-gpu-bench compare OURS.jsonl TORCH.jsonl` matches on.

    python3 bench/torch_anchor.py train --config tiny|enwik8|small|1b [--compile]
    python3 bench/torch_anchor.py matmul          # GEMMs at the model's shapes
    python3 bench/torch_anchor.py attention       # causal multi-query attention, fwd and fwd+bwd
    python3 bench/torch_anchor.py generate --config small --batch 64
    python3 bench/torch_anchor.py adamw --params 124e6
    python3 bench/torch_anchor.py ceilings        # GPU only: copy bandwidth, bf16 GEMM
    python3 bench/torch_anchor.py all

On a GPU: bf16 autocast over fp32 master weights, fused AdamW, times from CUDA events. On the CPU:
fp32 eager, `torch.set_num_threads` left at its default (all cores), wall-clock times. Times are
medians of `--iters` runs after `--warmup` runs.

The model is PaLM as palm implements it (docs/model.md): one pre-LayerNorm (gain only) per block
feeding attention and the SwiGLU feed-forward in parallel from one fused projection, one shared
key/value head, rotary embeddings with the xPos scale, no biases, tied input/output embeddings.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# (num_tokens, dim, depth, heads, dim_head, ff_mult, batch, seq): palm's presets and the batch
# shapes of its benches (bench/src/lib.rs `train_workload`).
SHAPES = {
    "tiny": (256, 128, 2, 4, 32, 4, 2, 64),
    "enwik8": (256, 512, 8, 8, 64, 4, 4, 1024),
    "small": (50304, 768, 12, 12, 64, 4, 16, 1024),
    "1b": (50304, 2048, 16, 16, 128, 4, 8, 2048),
}

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"


def out(**fields):
    print(json.dumps(fields), flush=True)


def timed(fn, warmup, iters):
    """Median seconds of one call of `fn`."""
    for _ in range(warmup):
        fn()
    if GPU:
        torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        if GPU:
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# ---- the model ----------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim, heads, dim_head, ff_mult):
        super().__init__()
        self.heads, self.dim_head, self.ff = heads, dim_head, dim * ff_mult
        self.gamma = nn.Parameter(torch.zeros(dim))
        width = heads * dim_head + 2 * dim_head + 2 * self.ff
        self.proj = nn.Linear(dim, width, bias=False)
        self.attn_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff_out = nn.Linear(self.ff, dim, bias=False)

    def forward(self, x, rot, cache=None):
        b, n, _ = x.shape
        h = F.layer_norm(x, x.shape[-1:], self.gamma + 1.0, None, 1e-5)
        q, k, v, ff_x, ff_gate = self.proj(h).split(
            [self.heads * self.dim_head, self.dim_head, self.dim_head, self.ff, self.ff], dim=-1
        )
        cos, sin, scale = rot
        q = rotate(q.view(b, n, self.heads, self.dim_head).transpose(1, 2), cos, sin) * scale
        k = rotate(k, cos, sin) / scale
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 1), torch.cat([cache["v"], v], 1)
            cache["k"], cache["v"] = k, v
        # One key/value head shared by every query head: broadcast it.
        o = F.scaled_dot_product_attention(
            q, k.unsqueeze(1), v.unsqueeze(1), is_causal=cache is None or n > 1
        )
        o = o.transpose(1, 2).reshape(b, n, -1)
        return x + self.attn_out(o) + self.ff_out(F.silu(ff_gate) * ff_x)


def rotate(u, cos, sin):
    half = u.shape[-1] // 2
    turned = torch.cat([-u[..., half:], u[..., :half]], -1)
    return u * cos + turned * sin


def tables(dim_head, start, n, device, dtype):
    """cos, sin and the xPos scale for positions start..start+n, centred on n/2."""
    j = torch.arange(0, dim_head, 2, device=device, dtype=torch.float32)
    theta = 10000.0 ** (-j / dim_head)
    pos = torch.arange(start, start + n, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, theta).repeat(1, 2)
    zeta = (j + 0.4 * dim_head) / (1.4 * dim_head)
    power = (pos - n // 2) / 512.0
    scale = (zeta[None, :] ** power[:, None]).repeat(1, 2)
    return tuple(t.to(dtype) for t in (freqs.cos(), freqs.sin(), scale))


class Palm(nn.Module):
    def __init__(self, num_tokens, dim, depth, heads, dim_head, ff_mult):
        super().__init__()
        self.dim_head = dim_head
        self.emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, ff_mult) for _ in range(depth))
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, ids, caches=None, start=0):
        x = self.emb(ids)
        rot = tables(self.dim_head, start, ids.shape[1], ids.device, x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, rot, None if caches is None else caches[i])
        x = F.layer_norm(x, x.shape[-1:], self.gamma + 1.0, None, 1e-5)
        return x @ self.emb.weight.t()


def parameters(num_tokens, dim, depth, heads, dim_head, ff_mult):
    ff = dim * ff_mult
    block = dim + dim * (heads * dim_head + 2 * dim_head + 2 * ff) + heads * dim_head * dim + ff * dim
    return num_tokens * dim + depth * block + dim


# ---- workloads ----------------------------------------------------------------------------


def train(name, compile_, warmup, iters):
    vocab, dim, depth, heads, dh, ffm, batch, seq = SHAPES[name]
    torch.manual_seed(0)
    model = Palm(vocab, dim, depth, heads, dh, ffm).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=GPU)
    run = torch.compile(model) if compile_ else model
    ids = torch.randint(1, vocab, (batch, seq + 1), device=DEV)
    autocast = torch.autocast(DEV, dtype=torch.bfloat16, enabled=GPU)

    def step():
        with autocast:
            logits = run(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), ids[:, 1:].reshape(-1), ignore_index=0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if GPU:
        torch.cuda.reset_peak_memory_stats()
    s = timed(step, max(warmup, 5) if compile_ else warmup, iters)
    n = parameters(vocab, dim, depth, heads, dh, ffm)
    flops = 6 * n + 6 * depth * heads * dh * seq  # weights, plus causal QKᵀ and AV
    out(
        bench="train", config=name, compiled=compile_, params=n, tokens_per_step=batch * seq,
        step_ms=s * 1e3, tokens_per_s=batch * seq / s, model_tflops=flops * batch * seq / s / 1e12,
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if GPU else None, device=device_name(),
    )


def matmul(warmup, iters):
    if GPU:
        vocab, dim, _, heads, dh, ffm, batch, seq = SHAPES["small"]
        rows, ff = batch * seq, dim * ffm
        shapes = [
            ("fused_proj_small", rows, heads * dh + 2 * dh + 2 * ff, dim),
            ("ff_out_small", rows, dim, ff),
            ("logits_small", rows, vocab, dim),
            ("square_4096", 4096, 4096, 4096),
            ("square_8192", 8192, 8192, 8192),
        ]
        dtype = torch.bfloat16
    else:
        # The CPU table: enwik8's fused projection and feed-forward output for 1024 tokens, 512³.
        shapes = [("fused_proj_enwik8", 1024, 4736, 512), ("ff_out_enwik8", 1024, 512, 2048), ("square_512", 512, 512, 512)]
        dtype = torch.float32
    for name, m, n, k in shapes:
        a = torch.randn(m, k, device=DEV, dtype=dtype)
        w = torch.randn(n, k, device=DEV, dtype=dtype)
        s = timed(lambda: a @ w.t(), warmup, iters)
        out(bench="matmul", shape=name, m=m, n=n, k=k, ms=s * 1e3, tflops=2 * m * n * k / s / 1e12, device=device_name())


def attention(warmup, iters):
    sizes = [(16, 12, 1024, 64), (8, 16, 2048, 128), (4, 16, 4096, 128)] if GPU else [(1, 8, 1024, 64), (2, 4, 256, 32)]
    dtype = torch.bfloat16 if GPU else torch.float32
    for b, h, n, d in sizes:
        q = torch.randn(b, h, n, d, device=DEV, dtype=dtype, requires_grad=True)
        k = torch.randn(b, 1, n, d, device=DEV, dtype=dtype, requires_grad=True)
        v = torch.randn(b, 1, n, d, device=DEV, dtype=dtype, requires_grad=True)

        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        g = torch.randn_like(fwd())
        s_f = timed(fwd, warmup, iters)
        s_fb = timed(lambda: torch.autograd.grad(fwd(), (q, k, v), g), warmup, iters)
        causal = 2 * b * h * n * n * d  # QKᵀ and AV over the lower triangle
        out(
            bench="attention", b=b, heads=h, seq=n, dim_head=d, fwd_ms=s_f * 1e3, fwd_tflops=causal / s_f / 1e12,
            fwd_bwd_ms=s_fb * 1e3, fwd_bwd_tflops=3.5 * causal / s_fb / 1e12, device=device_name(),
        )


@torch.no_grad()
def generate(name, batch, warmup, iters, prompt=64, new=256):
    vocab, dim, depth, heads, dh, ffm, _, _ = SHAPES[name]
    torch.manual_seed(0)
    model = Palm(vocab, dim, depth, heads, dh, ffm).to(DEV)
    if GPU:
        model = model.to(torch.bfloat16)
    ids = torch.randint(1, vocab, (batch, prompt), device=DEV)

    def run():
        caches = [{} for _ in model.blocks]
        logits = model(ids, caches)[:, -1]
        for i in range(new):
            nxt = torch.multinomial(F.softmax(logits.float() / 0.7, -1), 1)
            logits = model(nxt, caches, prompt + i)[:, -1]

    s = timed(run, min(warmup, 1), max(1, min(iters, 3)))
    out(bench="generate", config=name, batch=batch, prompt=prompt, new_tokens=new, s=s,
        tokens_per_s=batch * new / s, ms_per_token_step=s / new * 1e3, device=device_name())


def adamw(params, warmup, iters):
    p = torch.randn(int(params), device=DEV, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p], lr=1e-4, fused=GPU)
    s = timed(opt.step, warmup, iters)
    # Read: parameter, gradient, two moments; written: parameter and two moments (f32 each).
    out(bench="adamw", params=int(params), ms=s * 1e3, gbps=7 * 4 * params / s / 1e9, device=device_name())


def ceilings(warmup, iters):
    if not GPU:
        return
    x = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x), warmup, iters)
    out(bench="ceilings", what="d2d_copy", gbps=2 * x.numel() / s / 1e9, device=device_name())
    n = 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    s = timed(lambda: a @ b, warmup, iters)
    out(bench="ceilings", what=f"bf16_matmul_{n}", tflops=2 * n**3 / s / 1e12, device=device_name())


def device_name():
    return torch.cuda.get_device_name(0) if GPU else "cpu"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["train", "matmul", "attention", "generate", "adamw", "ceilings", "all"])
    p.add_argument("--config", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--compile", action="store_true", help="torch.compile the model (train)")
    p.add_argument("--batch", type=int, default=64, help="sequences per generate call")
    p.add_argument("--params", type=float, default=124e6, help="parameters of the AdamW step")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    out(bench="env", torch=torch.__version__, device=device_name(), threads=torch.get_num_threads())
    w, i = a.warmup, a.iters
    if a.what in ("ceilings", "all"):
        ceilings(w, i)
    if a.what in ("matmul", "all"):
        matmul(w, i)
    if a.what in ("attention", "all"):
        attention(w, i)
    if a.what == "train":
        train(a.config, a.compile, w, i)
    if a.what == "all":
        for name in ("enwik8", "small", "1b") if GPU else ("tiny", "enwik8"):
            train(name, False, w, i)
    if a.what == "generate":
        generate(a.config, a.batch, w, i)
    if a.what == "all" and GPU:
        for b in (1, 64):
            generate("small", b, w, i)
    if a.what in ("adamw", "all"):
        adamw(a.params, w, i)


if __name__ == "__main__":
    main()
