#!/usr/bin/env python3
"""HF transformers + PEFT's own reading of LoRA adapters, for qlorad's adapter tests.

PEFT makes two adapters on tests/golden/tiny_llama_fp (grouped-query attention: 8 query heads,
4 key/value heads; tied embeddings) with save_pretrained, and the PEFT-wrapped model gives its
logits for one token sequence with each adapter and without any. qlorad's engine must load
those adapters and give the same logits (tests/engine/peft_golden_test.cc): then the names,
shapes, scalings and module subsets it reads, and so writes (its export round-trips), are PEFT's.

    pip install torch transformers peft safetensors
    python3 tests/golden/make_peft_golden.py

Writes, next to this script:
  tiny_llama_lora/      r=4, alpha=8 (scale alpha/r), every linear layer
  tiny_llama_rslora/    r=8, alpha=4, use_rslora (scale alpha/sqrt(r)), q_proj, v_proj, down_proj
  tiny_llama_lora_logits.safetensors
      tokens [T] (float32 holding token ids), base [T, vocab], lora [T, vocab], rslora [T, vocab]

LoRA B starts at zero in PEFT (an adapter that changes nothing); every LoRA weight is drawn
here from N(0, 0.1) with a fixed seed instead, so that each one matters. Single-threaded and
seeded: two runs give the same files.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HERE = Path(__file__).resolve().parent
BASE = HERE / "tiny_llama_fp"
TOKENS = [1, 17, 300, 45, 200, 511, 3, 99, 128, 64, 7, 402]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    "lora": dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR, use_rslora=False, seed=1),
    "rslora": dict(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                   use_rslora=True, seed=2),
}


def make_adapter(name, spec, out_dir):
    base = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)
    base.eval()
    config = LoraConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                        target_modules=spec["target_modules"], use_rslora=spec["use_rslora"],
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for param_name, param in sorted(model.named_parameters()):
            if "lora_" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.eval()
    target = out_dir / f"tiny_llama_{name}"
    if target.exists():
        shutil.rmtree(target)
    model.save_pretrained(str(target))
    # The folder is the reference: PEFT writes base_model_name_or_path as this machine's path.
    config_path = target / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    saved["base_model_name_or_path"] = "tiny_llama_fp"
    saved["target_modules"] = sorted(saved["target_modules"])  # PEFT keeps a set: any order
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    for extra in target.iterdir():
        if extra.name not in ("adapter_config.json", "adapter_model.safetensors"):
            extra.unlink()  # a README.md model card
    ids = torch.tensor([TOKENS])
    with torch.no_grad():
        with_adapter = model(ids).logits[0].float().contiguous()
        with model.disable_adapter():
            without = model(ids).logits[0].float().contiguous()
    return with_adapter, without


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logits = {"tokens": torch.tensor(TOKENS, dtype=torch.float32)}
    for name, spec in ADAPTERS.items():
        with_adapter, without = make_adapter(name, spec, args.out)
        if "base" in logits:
            assert torch.equal(logits["base"], without), "the base logits differ between runs"
        logits["base"] = without
        logits[name] = with_adapter
        change = (with_adapter - without).abs().max().item()
        print(f"{name}: max |logit change| = {change:.4f}, max |logit| = "
              f"{with_adapter.abs().max().item():.4f}")
        assert change > 0.05, f"the {name} adapter changes nothing"
    save_file(logits, str(args.out / "tiny_llama_lora_logits.safetensors"),
              metadata={"format": "pt"})


if __name__ == "__main__":
    main()
