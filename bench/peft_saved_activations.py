#!/usr/bin/env python3
"""What PyTorch + PEFT keeps for the backward pass of a LLaMA-shaped LoRA model, per token and
decoder layer, measured on the CPU (no GPU needed): the tensors autograd saves during one
forward pass are summed by storage through torch.autograd.graph.saved_tensors_hooks (frozen
weights excluded), for one and for two layers; the difference is one layer's keep. bf16, r=16
on every linear layer, lora_dropout 0.05, the attention transformers picks (sdpa).

  python3 bench/peft_saved_activations.py [--seq 512] [--hidden 4096] [--intermediate 11008]
"""
import argparse
import json


def saved_bytes(layers, a):
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=layers,
        num_attention_heads=a.heads, num_key_value_heads=a.heads, vocab_size=a.vocab,
        max_position_embeddings=max(a.seq, 2048), tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    lora = peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.05,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)
    model.train()
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
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--rank", type=int, default=16)
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
