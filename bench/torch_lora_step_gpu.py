#!/usr/bin/env python3
"""PyTorch + PEFT peer of tests/gpu/train_step_gpu_bench on a GPU: one LoRA training step of a
LLaMA-shaped model in bf16 (random weights made on the GPU), r=16 on every linear layer, AdamW,
batch x seq random tokens. Prints one JSON line: step time, tokens/s, peak GPU memory (what
torch's allocator handed to tensors, and what it held from the card: the figure comparable with
qlorad's drop in free device memory).

  python3 bench/torch_lora_step_gpu.py [--layers 32] [--seq 2048] [--batch 1] [--steps 3]
                                       [--checkpointing]
"""
import argparse
import json
import time


def add_shape_args(p, seq=2048):
    """The model and LoRA shape (LLaMA-7B and r 16 by default), shared with
    bench/peft_saved_activations.py."""
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=seq)
    p.add_argument("--rank", type=int, default=16)


def peft_llama(a, layers, checkpointing=False):
    """A random LLaMA of shape `a` with `layers` decoder layers in bf16 (made on the current
    default torch device), LoRA r a.rank, alpha 2r, dropout 0.05 on all seven linear layers, in
    training mode."""
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab,
        max_position_embeddings=max(a.seq, 2048), tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    lora = peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.05,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"], task_type="CAUSAL_LM")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = peft.get_peft_model(model, lora)
    model.train()
    return model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=32)
    add_shape_args(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--checkpointing", action="store_true",
                   help="gradient checkpointing (recompute each layer in the backward)")
    a = p.parse_args()

    import peft
    import torch
    import transformers

    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = peft_llama(a, a.layers, a.checkpointing)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    load_s = time.perf_counter() - t0
    # The float32 model the constructor made (27 GB at 7B) was cast to bf16 and freed into
    # torch's cache: hand it back, so that "reserved" counts the training step alone.
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    times, loss = [], float("nan")
    for step in range(a.steps + 1):
        ids = torch.randint(3, a.vocab, (a.batch, a.seq), device="cuda")
        torch.cuda.synchronize()
        s = time.perf_counter()
        # No KV cache: training needs none, and it would hold K and V past the step.
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step > 0:
            times.append(time.perf_counter() - s)
        loss = out.loss.item()
        del out  # the logits, not alive into the next step's forward
    mean = sum(times) / len(times)
    print(json.dumps({
        "peer": "torch+peft bf16", "layers": a.layers,
        "hidden": a.hidden, "seq": a.seq, "batch": a.batch, "rank": a.rank,
        "checkpointing": a.checkpointing, "attention": model.config._attn_implementation,
        "load_s": round(load_s, 1), "step_s": round(mean, 4),
        "tokens_per_s": round(a.batch * a.seq / mean, 1), "loss": round(loss, 4),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "gpu": torch.cuda.get_device_name(0)}))


if __name__ == "__main__":
    main()
