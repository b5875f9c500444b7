#!/usr/bin/env python3
# PyTorch fp32 CPU reference: time of one LoRA training step on a synthetic
# mid-size LLaMA, to compare against the qlorad engine on the same shape.
#
# Command (repo root):  python3 bench/torch_lora_step.py --threads 2
#   (runs eager then sdpa, each in its own subprocess; 2 warm-up + 10 timed steps)
# Machine: 2-core Debian 12 VM, 23 GiB RAM; torch 2.15.0+cu132 (CPU only),
#   peft 0.21.2, transformers 5.24.0, python 3.11.7.  Run at 1-min load 0.8
#   (another engineer's builds/tests share the box; runs under load were
#   2.5-3x slower and noisy, so numbers below are from the quiet run).
# Result:
#   eager: trainable 1196032 / 57565696 params, step median 3177.2 ms mean 3170.8 ms,
#          322.3 tokens/s, cpu/step 5850.5 ms, peak RSS 2821.6 MiB
#   sdpa : trainable 1196032 / 57565696 params, step median 3163.4 ms mean 3980.0 ms,
#          323.7 tokens/s, cpu/step 6094.0 ms, peak RSS 2569.2 MiB
#          (sdpa mean inflated by 3 steps hit by a burst of outside load; min 2692 ms)
#   {"attn": "eager", "threads": 2, "batch": 4, "seq": 256, "trainable_params": 1196032,
#    "total_params": 57565696, "step_ms_median": 3177.2, "step_ms_mean": 3170.8,
#    "step_ms_min": 2988.6, "tokens_per_s": 322.3, "step_cpu_ms_median": 5850.5,
#    "loadavg_1m_start_end": [0.82, 1.39], "peak_rss_mib": 2821.6, "steps": 10, "warmup": 2,
#    "first_loss": 10.4904, "torch": "2.15.0+cu132", "peft": "0.21.2", "transformers": "5.24.0"}
#   {"attn": "sdpa", "threads": 2, "batch": 4, "seq": 256, "trainable_params": 1196032,
#    "total_params": 57565696, "step_ms_median": 3163.4, "step_ms_mean": 3980.0,
#    "step_ms_min": 2692.1, "tokens_per_s": 323.7, "step_cpu_ms_median": 6094.0,
#    "loadavg_1m_start_end": [1.3, 1.83], "peak_rss_mib": 2569.2, "steps": 10, "warmup": 2,
#    "first_loss": 10.4904, "torch": "2.15.0+cu132", "peft": "0.21.2", "transformers": "5.24.0"}
#   Trainable count check: per layer 16*((512+512)*2 + (512+256)*2 + (512+1408)*3)
#   = 149504, x 8 layers = 1196032.  first_loss ~ ln(32000) = 10.37 as expected
#   for a random init.  Wall clock ~2 min for both runs.
#
# Model: LlamaConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
#   num_key_value_heads=4, intermediate_size=1408, vocab_size=32000,
#   max_position_embeddings=512, tie_word_embeddings=False), random init after
#   torch.manual_seed(seed), fp32.
# LoRA: peft r=16, lora_alpha=32, lora_dropout=0.05 (PEFT semantics: dropout on
#   the LoRA input only, active in train mode), bias none, on q,k,v,o,gate,up,down.
# Step: batch 4 x seq 256 random token ids (torch.randint, seeded), labels =
#   input ids (HF shifts internally, so 4*255 target positions), forward +
#   backward + torch.optim.AdamW(lr 1e-4).step() + zero_grad(set_to_none=True).
#   A fresh random batch is drawn (untimed) before every step.
# Timing: --warmup (2) untimed steps, then --steps (10) timed steps
#   (time.perf_counter around the four calls).  tokens/s = 4*256 / median step.
# Each attention implementation runs in its own subprocess so that peak RSS
#   (resource.getrusage(RUSAGE_SELF).ru_maxrss, KiB on Linux) is per run.
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BATCH, SEQ = 4, 256


def bench(args):
    import torch
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, intermediate_size=1408, vocab_size=32000,
                      max_position_embeddings=512, tie_word_embeddings=False)
    cfg._attn_implementation = args.attn
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.config._attn_implementation = args.attn
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    assert model.base_model.model.config._attn_implementation == args.attn
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed + 1)

    times, cpu_times, losses = [], [], []
    load0 = os.getloadavg()[0]
    for i in range(args.warmup + args.steps):
        ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
        t0 = time.perf_counter()
        c0 = time.process_time()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        dc = time.process_time() - c0
        losses.append(float(out.loss.detach()))
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
        print(f"  [{args.attn}] step {i - args.warmup:+d} {dt * 1e3:.1f} ms (cpu {dc * 1e3:.0f} ms) loss {losses[-1]:.4f}",
              file=sys.stderr, flush=True)
    med = statistics.median(times)
    res = {
        "attn": args.attn,
        "threads": args.threads,
        "batch": BATCH,
        "seq": SEQ,
        "trainable_params": trainable,
        "total_params": total,
        "step_ms_median": round(med * 1e3, 1),
        "step_ms_mean": round(statistics.mean(times) * 1e3, 1),
        "step_ms_min": round(min(times) * 1e3, 1),
        "tokens_per_s": round(BATCH * SEQ / med, 1),
        "step_cpu_ms_median": round(statistics.median(cpu_times) * 1e3, 1),
        "loadavg_1m_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "steps": args.steps,
        "warmup": args.warmup,
        "first_loss": round(losses[0], 4),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn", default="both", choices=["both", "eager", "sdpa"])
    args = ap.parse_args()
    if args.attn != "both":
        bench(args)
        return
    results = []
    for attn in ("eager", "sdpa"):
        cmd = [sys.executable, os.path.abspath(__file__), "--attn", attn,
               "--threads", str(args.threads), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--seed", str(args.seed)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
    for r in results:
        print(f"{r['attn']:5s}: trainable {r['trainable_params']} / {r['total_params']} params, "
              f"step median {r['step_ms_median']} ms mean {r['step_ms_mean']} ms, "
              f"{r['tokens_per_s']} tokens/s, cpu/step {r['step_cpu_ms_median']} ms, peak RSS {r['peak_rss_mib']} MiB, "
              f"torch {r['torch']}")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
