#!/usr/bin/env python3
"""One benchmark sitting on the CPU: PyTorch and palm side by side, interleaved, in rounds.

Run it with the Python that has torch (a virtual environment outside the repository), from the
repository root:

    ~/torch-venv/bin/python bench/sitting.py                  # train, matmul, attention; 3 rounds
    ~/torch-venv/bin/python bench/sitting.py --rounds 5 --only train decode

Each round runs, for every workload group in turn, PyTorch's side (`bench/torch_anchor.py`) and
then ours (`cargo bench -p palm-bench`, criterion) back to back, so the two sides of a ratio
share the machine's state. It prints a Markdown table: every round's numbers on both sides,
every round's ratio (above 1: ours is faster) and the median of the rounds' ratios. This is the
table BENCHMARKS.md keeps; a shared or noisy machine moves both sides by 10–25% between rounds,
so read the medians and compare only within a round.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys

# Criterion prints a bench's id, then `time: [low estimate high]` (change lines carry a %).
TIME_LINE = re.compile(r"time:\s+\[\S+ \S+ (\S+) (ns|µs|us|ms|s) \S+ \S+\]")
UNIT_S = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def torch_side(args):
    """PyTorch's JSON lines for one anchor command."""
    cmd = [sys.executable, "bench/torch_anchor.py", *args]
    log("  $ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def our_side(bench, filter_):
    """Criterion's estimate in seconds for each bench id the filter runs."""
    cmd = ["cargo", "bench", "-q", "-p", "palm-bench", "--bench", bench, "--", filter_]
    log("  $ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    times, current = {}, None
    for line in out.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0]
        m = TIME_LINE.search(line)
        if m and current and "%" not in line:
            times[current] = float(m.group(1)) * UNIT_S[m.group(2)]
    return times


def train(rows):
    for config in ("tiny", "enwik8"):
        t = torch_side(["train", "--config", config])
        ours = our_side("train_step", config)
        t = next(x for x in t if x.get("bench") == "train")
        tokens = t["tokens_per_step"]
        rows.append((f"train `{config}`, tokens/s", t["tokens_per_s"],
                     tokens / ours[f"train_step/{config}"], True))


def matmul(rows):
    t = torch_side(["matmul"])
    ours = our_side("cpu_ops", "matmul")
    for x in (x for x in t if x.get("bench") == "matmul"):
        flops = 2 * x["m"] * x["n"] * x["k"]
        rows.append((f"matmul {x['m']}×{x['k']} · {x['k']}×{x['n']}, GFLOP/s",
                     x["tflops"] * 1e3, flops / ours[f"matmul/{x['shape']}"] / 1e9, True))


def attention(rows):
    t = torch_side(["attention"])
    ours = our_side("cpu_ops", "attention")
    for x in (x for x in t if x.get("bench") == "attention"):
        shape = f"b{x['b']}_h{x['heads']}_n{x['seq']}_d{x['dim_head']}"
        for key, name in (("fwd_ms", "fwd"), ("fwd_bwd_ms", "fwd_bwd")):
            label = name.replace("_", "+")
            rows.append((f"attention {label} {shape.replace('_', ' ')}, ms", x[key],
                         ours[f"attention/{name}_{shape}"] * 1e3, False))


def decode(rows):
    cases = (("tiny", 1), ("tiny", 8), ("enwik8", 1))
    t = [torch_side(["generate", "--config", c, "--batch", str(b)]) for c, b in cases]
    ours = our_side("decode", "decode")
    for (config, batch), lines in zip(cases, t):
        x = next(x for x in lines if x.get("bench") == "generate")
        new = batch * x["new_tokens"]
        rows.append((f"decode `{config}`, {batch} row(s), new tokens/s", x["tokens_per_s"],
                     new / ours[f"decode/{config}_b{batch}"], True))


# Each group's runner: appends (workload, PyTorch's number, ours, higher is better) to rows.
GROUP_RUNNERS = {"train": train, "matmul": matmul, "attention": attention, "decode": decode}


def fmt(v):
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}" if v >= 10 else f"{v:.3g}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=list(GROUP_RUNNERS),
                   default=["train", "matmul", "attention"])
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    import torch  # only to name it in the header; the anchor runs in its own process

    log("building the benches first (not timed)")
    subprocess.run(["cargo", "bench", "-q", "-p", "palm-bench", "--no-run"], check=True)
    info = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    cpu = (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} "
           f"model {info.get('model', '?')}, {os.cpu_count()} logical CPUs"
           f"{', AVX-512' if 'avx512f' in info.get('flags', '').split() else ''})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    results = {}  # workload -> [(torch, ours)] per round; insertion order kept
    higher_better = {}
    start = datetime.datetime.now(datetime.timezone.utc)
    for r in range(a.rounds):
        log(f"round {r + 1} of {a.rounds}")
        for group in a.only:
            rows = []
            GROUP_RUNNERS[group](rows)
            for name, t, o, hb in rows:
                results.setdefault(name, []).append((t, o))
                higher_better[name] = hb
    end = datetime.datetime.now(datetime.timezone.utc)
    print(f"{cpu}; PyTorch {torch.__version__}, {torch.get_num_threads()} threads; palm {commit};"
          f" {start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC, {a.rounds} interleaved round(s)\n")
    print("| workload | PyTorch (by round) | ours (by round) | ratios | median |")
    print("|---|---:|---:|---|---:|")
    for name, pairs in results.items():
        ratios = [o / t if higher_better[name] else t / o for t, o in pairs]
        print(f"| {name} | {' / '.join(fmt(t) for t, _ in pairs)} | "
              f"{' / '.join(fmt(o) for _, o in pairs)} | "
              f"{' / '.join(f'{x:.2f}' for x in ratios)} | **{statistics.median(ratios):.2f}×** |")


if __name__ == "__main__":
    main()
