#!/usr/bin/env python3
"""What PyTorch + PEFT keeps for the backward pass of a LLaMA-shaped LoRA model, per token and
decoder layer, measured on the CPU (no GPU needed): the tensors autograd saves during one
forward pass are summed by storage through torch.autograd.graph.saved_tensors_hooks (frozen
weights excluded), for one and for two layers; the difference is one layer's keep. bf16, r=16
on every linear layer, lora_dropout 0.05, the attention transformers picks (sdpa).

  python3 bench/peft_saved_activations.py [--seq 512] [--hidden 4096] [--intermediate 11008] ...
(the model is bench/torch_lora_step_gpu.py's peer, built by its peft_llama)
"""
import argparse
import json

from torch_lora_step_gpu import add_shape_args, peft_llama


def saved_bytes(layers, a):
    import torch

    model = peft_llama(a, layers)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    ids = torch.randint(3, a.vocab, (1, a.seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(saved.values()), model.config._attn_implementation


def main():
    p = argparse.ArgumentParser()
    add_shape_args(p, seq=512)
    a = p.parse_args()
    one, attention = saved_bytes(1, a)
    two, _ = saved_bytes(2, a)
    import peft
    import torch
    import transformers
    print(json.dumps({
        "seq": a.seq, "hidden": a.hidden, "intermediate": a.intermediate, "attention": attention,
        "saved_kib_per_token_one_layer_and_head": round(one / a.seq / 1024, 1),
        "saved_kib_per_token_per_layer": round((two - one) / a.seq / 1024, 1),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__}))


if __name__ == "__main__":
    main()
