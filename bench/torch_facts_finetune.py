#!/usr/bin/env python3
# PyTorch fp32 reference LoRA fine-tune of stories260K on the Pipville facts
# (tests/data/facts_{train,valid}.jsonl).  Acceptance reference for qlorad.
#
# Command (run from the repo root, after writing /tmp/stories260K-hf with
# qlora-engine convert-llama2c as below):
#   python3 bench/torch_facts_finetune.py            # = /tmp/stories260K-hf --steps 300 --seed 0
# Versions: torch 2.15.0+cu132 (CPU), peft 0.21.2, transformers 5.24.0,
#   sentencepiece 0.2.3, python 3.11.7.  Loading needed nothing special
#   (from_pretrained reads the converted dir as is; lm_head is tied to
#   embed_tokens); the script still passes LlamaConfig.from_pretrained(dir).
# Output (2-core Debian 12 box, 2 torch threads; identical numbers on reruns):
#   train 40 facts / 264 target tokens, valid 12 facts / 81 target tokens
#   trainable params 46240 / total 306272
#   first batch (seed 0) fact indices: [4, 16, 21, 5, 11, 14, 39, 29]
#   first batch shape (8, 37), 55 target tokens
#   first batch example 0 ids [1, 359, 416, 410, 460, 417, 427, 435, 290, 305, 432, 265, 280,
#     415, 290, 418, 276, 416, 344, 294, 262, 277, 427, 284, 380, 411, 373, 282, 271, 433,
#     329, 303, 419, 426, 2]   (fact 4: "In Pipville, the children eat soup made of" " pink beans.")
#   first batch example 0 labels: -100 x 27, then [282, 271, 433, 329, 303, 419, 426, 2]
#   first batch loss before update: hf 6.453403  own 6.453403
#   step    0  train_loss 6.3957  valid_loss 6.5013  (excl. EOS: train 2.9766 valid 3.2085)  train_correct 0.000
#   step   25  train_loss 1.2300  valid_loss 1.6989  (excl. EOS: train 0.4851 valid 1.0547)  train_correct 0.525
#   step   50  train_loss 0.8672  valid_loss 1.6581  (excl. EOS: train 0.0611 valid 1.0099)  train_correct 0.975
#   step   75  train_loss 0.8250  valid_loss 1.9038  (excl. EOS: train 0.0143 valid 1.3017)  train_correct 1.000
#   step  100  train_loss 0.8164  valid_loss 1.9115  (excl. EOS: train 0.0068 valid 1.3135)  train_correct 1.000
#   step  200  train_loss 0.8091  valid_loss 2.0567  (excl. EOS: train 0.0025 valid 1.4880)  train_correct 1.000
#   step  300  train_loss 0.8079  valid_loss 2.1704  (excl. EOS: train 0.0015 valid 1.6220)  train_correct 1.000
#   {"first_step_loss": 6.453403, "final_train_loss": 0.807857, "final_valid_loss": 2.170436,
#    "final_train_loss_excl_eos": 0.001453, "final_valid_loss_excl_eos": 1.621959,
#    "min_valid_loss": 1.658093, "min_valid_loss_step": 50, "steps_to_all_correct": 75,
#    "fraction_correct_at_end": 1.0, "valid_fraction_correct_at_end": 0.08333333333333333,
#    "steps": 300, "seed": 0, "seconds": 162.52, "torch": "2.15.0+cu132", "peft": "0.21.2",
#    "transformers": "5.24.0"}
#   "seconds" = training loop incl. the 13 evals (greedy decodes included).
#   It depends on what else runs on the 2 cores: 99.65 s
#   (whole process 2m05s wall) on a quiet machine, 162.5 s (3m30s) with a C++
#   build running, 379 s (7m07s) at load average ~6.  Losses are bit-identical
#   across these runs.
#
# Reading the numbers:
#   * All 40 training facts are reproduced greedily from step 75 (0.975 at 50).
#   * The train loss floors at ~0.81 because of the EOS targets, not the facts:
#     stories260K (llama2.c) never saw token 2 (</s>) in pre-training, its
#     embedding is tied to lm_head, and LoRA does not touch the embeddings or
#     the final RMSNorm, so the final hidden state has a fixed norm and the
#     best reachable log p(</s>) is about -5.375 (found by maximising it over
#     all final hidden states).  40 EOS targets * 5.375 / 264 targets = 0.814.
#     Excluding the EOS targets the train loss goes to 0.0015.  The C++ engine
#     should show the same floor if it trains the same parameters.
#   * Valid loss (same facts, reworded prompts) falls 6.50 -> 1.66 (step 50,
#     excl. EOS 3.21 -> 1.01) and then creeps up (2.17 at step 300) as the
#     adapter overfits the exact training prompts; only 1 of 12 reworded
#     prompts is answered greedily.  A 260K-param model barely generalises
#     across phrasings; use the valid-loss drop, not valid accuracy, as a signal.
#   * Other seeds, --steps 100: seed 1 first loss 6.359845, all correct at 75;
#     seed 2 first loss 6.580824, all correct at 75.
#   * Epoch-0 order for seed 0: [4, 16, 21, 5, 11, 14, 39, 29 | 17, 26, 2, 6, 20,
#     25, 24, 1 | 15, 32, 28, 18, 9, 0, 10, 19 | 8, 36, 27, 7, 37, 38, 31, 30 |
#     35, 12, 3, 34, 33, 22, 23, 13]  (0-based line numbers of facts_train.jsonl).
#   * eager and sdpa attention give the same first loss and the same step-25 line.
#
# Recipe (what the C++ side has to mirror):
#   model      HF LLaMA dir written by
#                qlora-engine convert-llama2c --checkpoint stories260K.bin \
#                  --tokenizer tok512.model --out /tmp/stories260K-hf
#              loaded with LlamaForCausalLM.from_pretrained(dir, dtype=float32),
#              attn_implementation "eager" (sdpa gives the same numbers).
#   tokens     sp = sentencepiece.SentencePieceProcessor(model_file=<dir>/tokenizer.model)
#              ids    = [1] + sp.encode(prompt) + sp.encode(completion) + [2]
#              labels = [-100] * (1 + len(prompt ids)) + completion ids + [2]
#              (HF shift: logits at position t predict labels[t+1]; so the last
#              prompt token predicts the first completion token, ..., and the
#              last completion token predicts EOS.)
#   batches    right-padded with pad id 0, label -100, attention_mask 0.
#              order: g = torch.Generator().manual_seed(seed) created ONCE;
#              every epoch perm = torch.randperm(len(train), generator=g);
#              batches are consecutive slices perm[0:8], perm[8:16], ...;
#              a final partial batch (len(train) % 8) is kept (40 facts -> none).
#              So with --seed 0 the first epoch's order is exactly
#              torch.randperm(40, generator=torch.Generator().manual_seed(0)).
#   loss       mean cross-entropy over all target tokens of the batch (HF default).
#   LoRA       peft r=8, lora_alpha=16 (scale 2), lora_dropout 0.0, bias none,
#              q,k,v,o,gate,up,down.  B starts at 0, so the first-batch loss is
#              the base model's loss and does not depend on the LoRA A init
#              (which does use torch.manual_seed(seed)).
#   optimizer  torch.optim.AdamW(lora params, lr=3e-3, betas=(0.9,0.999),
#              eps=1e-8, weight_decay=0), constant LR, no warmup, no grad clip.
#   eval       every --eval-every steps (and at step 0 and the final step):
#              full train-set loss and valid loss (mean over all target tokens of
#              the file, one batch, eval mode, no grad) and the fraction of
#              training prompts whose greedy continuation (from [1]+sp.encode(prompt),
#              at most 8 new tokens, stop at EOS, argmax, no KV tricks) decodes
#              (sp.decode of the new ids, EOS excluded) to text that satisfies
#              decoded.strip().startswith(completion.strip()).
import argparse
import json
import os
import sys
import time

import torch

try:
    import sentencepiece as spm
except ImportError:  # pragma: no cover
    sys.exit("pip install sentencepiece")
try:
    import peft
    from peft import LoraConfig, get_peft_model
except ImportError:  # pragma: no cover
    sys.exit("pip install peft")
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "tests", "data"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BOS, EOS, PAD = 1, 2, 0


def load_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                d = json.loads(line)
                rows.append((d["prompt"], d["completion"]))
    return rows


def encode(sp, prompt, completion):
    p = sp.encode(prompt)
    c = sp.encode(completion)
    ids = [BOS] + p + c + [EOS]
    labels = [-100] * (1 + len(p)) + c + [EOS]
    return ids, labels


def collate(examples):
    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), PAD, dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    attn = torch.zeros((len(examples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attn[i, : len(ids)] = 1
    return input_ids, labels, attn


def own_loss(logits, labels):
    """Mean next-token cross-entropy over target positions (labels != -100)."""
    logits = logits[:, :-1, :].float()
    tgt = labels[:, 1:]
    mask = tgt != -100
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * mask).sum() / mask.sum(), int(mask.sum())


@torch.no_grad()
def set_loss(model, encoded):
    """(loss over all targets via HF, loss over targets other than EOS)."""
    input_ids, labels, attn = collate(encoded)
    out = model(input_ids=input_ids, attention_mask=attn, labels=labels)
    no_eos = labels.masked_fill(labels == EOS, -100)
    l2, _ = own_loss(out.logits, no_eos)
    return float(out.loss), float(l2)


@torch.no_grad()
def greedy(model, sp, prompt, max_new=8):
    ids = [BOS] + sp.encode(prompt)
    new = []
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([ids + new])).logits
        nxt = int(logits[0, -1].argmax())
        if nxt == EOS:
            break
        new.append(nxt)
    return sp.decode(new)


def fraction_correct(model, sp, rows, verbose=False):
    ok = 0
    wrong = []
    for prompt, completion in rows:
        text = greedy(model, sp, prompt)
        if text.strip().startswith(completion.strip()):
            ok += 1
        else:
            wrong.append((prompt, completion, text))
    if verbose:
        for p, c, t in wrong:
            print(f"  WRONG {p!r} -> {t!r} (want {c!r})")
    return ok / len(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", nargs="?", default="/tmp/stories260K-hf")
    ap.add_argument("--train", default=os.path.join(DATA, "facts_train.jsonl"))
    ap.add_argument("--valid", default=os.path.join(DATA, "facts_valid.jsonl"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    cfg = LlamaConfig.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(
        args.model, config=cfg, dtype=torch.float32, attn_implementation=args.attn
    )
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model, "tokenizer.model"))
    assert sp.bos_id() == BOS and sp.eos_id() == EOS

    train_rows = load_jsonl(args.train)
    valid_rows = load_jsonl(args.valid)
    train_enc = [encode(sp, p, c) for p, c in train_rows]
    valid_enc = [encode(sp, p, c) for p, c in valid_rows]
    n_train_tgt = sum(sum(1 for l in lab if l != -100) for _, lab in train_enc)
    n_valid_tgt = sum(sum(1 for l in lab if l != -100) for _, lab in valid_enc)
    print(f"train {len(train_rows)} facts / {n_train_tgt} target tokens, "
          f"valid {len(valid_rows)} facts / {n_valid_tgt} target tokens")

    lcfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    print(f"trainable params {n_trainable} / total {n_total}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)

    gen = torch.Generator().manual_seed(args.seed)
    queue = []

    def next_batch():
        nonlocal queue
        if not queue:
            perm = torch.randperm(len(train_enc), generator=gen).tolist()
            queue = [perm[i : i + args.batch] for i in range(0, len(perm), args.batch)]
        return queue.pop(0)

    # ---- first batch, before any update ----------------------------------
    first_idx = next_batch()
    queue.insert(0, first_idx)
    input_ids, labels, attn = collate([train_enc[i] for i in first_idx])
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attn, labels=labels)
        mine, ntgt = own_loss(out.logits, labels)
    print(f"first batch (seed {args.seed}) fact indices: {first_idx}")
    print(f"first batch shape {tuple(input_ids.shape)}, {ntgt} target tokens")
    ids0, lab0 = train_enc[first_idx[0]]
    print(f"first batch example 0 ids {ids0}")
    print(f"first batch example 0 labels {lab0}")
    print(f"first batch loss before update: hf {float(out.loss):.6f}  own {float(mine):.6f}")
    first_loss = float(out.loss)

    def evaluate(step, batch_loss, recent):
        model.eval()
        tr, tr_ne = set_loss(model, train_enc)
        va, va_ne = set_loss(model, valid_enc)
        frac = fraction_correct(model, sp, train_rows)
        vfrac = fraction_correct(model, sp, valid_rows)
        bl = "-" if batch_loss is None else f"{batch_loss:.4f}"
        rl = "-" if not recent else f"{sum(recent) / len(recent):.4f}"
        print(f"step {step:4d}  batch_loss {bl}  avg_batch_loss {rl}  train_loss {tr:.4f}  "
              f"valid_loss {va:.4f}  (excl. EOS: train {tr_ne:.4f} valid {va_ne:.4f})  train_correct {frac:.3f}  valid_correct {vfrac:.3f}",
              flush=True)
        model.train()
        return tr, va, frac, vfrac, tr_ne, va_ne

    _, best_va, _, _, _, _ = evaluate(0, None, [])
    best_va_step = 0
    steps_to_all = None
    recent = []
    t0 = time.time()
    tr = va = frac = vfrac = tr_ne = va_ne = None
    for step in range(1, args.steps + 1):
        model.train()
        idx = next_batch()
        input_ids, labels, attn = collate([train_enc[i] for i in idx])
        out = model(input_ids=input_ids, attention_mask=attn, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        recent.append(float(out.loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            tr, va, frac, vfrac, tr_ne, va_ne = evaluate(step, float(out.loss.detach()), recent)
            if va < best_va:
                best_va, best_va_step = va, step
            recent = []
            if frac == 1.0 and steps_to_all is None:
                steps_to_all = step
    seconds = time.time() - t0
    model.eval()
    fraction_correct(model, sp, train_rows, verbose=True)
    summary = {
        "first_step_loss": round(first_loss, 6),
        "final_train_loss": round(tr, 6),
        "final_valid_loss": round(va, 6),
        "final_train_loss_excl_eos": round(tr_ne, 6),
        "final_valid_loss_excl_eos": round(va_ne, 6),
        "min_valid_loss": round(best_va, 6),
        "min_valid_loss_step": best_va_step,
        "steps_to_all_correct": steps_to_all,
        "fraction_correct_at_end": frac,
        "valid_fraction_correct_at_end": vfrac,
        "steps": args.steps,
        "seed": args.seed,
        "seconds": round(seconds, 2),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
