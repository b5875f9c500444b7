#!/usr/bin/env bash
# The offline CLI's whole path on the card, the README's fine-tune without the daemon: stories260K
# converted from its llama2.c checkpoint, the facts set trained 150 steps with the demo's
# hyperparameters on the CPU and on cuda:0, each adapter evaluated on the reworded prompts, and
# a greedy continuation with the card's adapter. The card must agree with the CPU on the first
# step's loss (2%: bf16 GEMM inputs, the same data and initial adapter), learn the facts (last
# loss under 1.5 from about 7.8, as tests/integration's daemon test asks) and evaluate within 10%
# of the CPU's adapter (150 steps apart, the two trajectories drift).
#   cli_finetune.sh ENGINE MODELS_DIR OUT_DIR      (run from the repository root)
# CLI_DEVICE=cpu checks the script itself where there is no card (the CPU against itself).
set -uo pipefail
engine=$1 models=$2 out=$3 card=${CLI_DEVICE:-cuda:0}
mkdir -p "$out"
"$engine" convert-llama2c --checkpoint "$models/stories260K/stories260K.bin" \
  --tokenizer "$models/stories260K/tok512.model" --out "$out/hf" > "$out/convert.log" 2>&1 ||
  { echo "cli: convert FAILED"; tail -3 "$out/convert.log"; exit 1; }
status=0
declare -A evals secs
# Two runs, "ref" on the CPU and "card" on $card, each with its own adapter folder.
for run in ref card; do
  dev=cpu
  [ $run = ref ] || dev=$card
  t0=$(date +%s%N)
  if ! "$engine" train --model "$out/hf" --data tests/data/facts_train.jsonl --out "$out/ad-$run" \
      --rank 8 --alpha 16 --dropout 0 --lr 3e-3 --schedule constant --warmup-ratio 0 \
      --max-steps 150 --batch-size 8 --seq-len 64 --seed 0 --device "$dev" \
      > "$out/train-$run.log" 2>&1; then
    echo "cli: train on $dev FAILED"; tail -5 "$out/train-$run.log"; exit 1
  fi
  secs[$run]=$(( ($(date +%s%N) - t0) / 1000000 ))
  if ! line=$("$engine" eval --model "$out/hf" --adapter "$out/ad-$run" \
      --data tests/data/facts_valid.jsonl --device "$dev" 2>"$out/eval-$run.log"); then
    echo "cli: eval on $dev FAILED"; tail -5 "$out/eval-$run.log"; exit 1
  fi
  evals[$run]=$(echo "$line" | awk '{print $2}')
done
if ! gen=$("$engine" generate --model "$out/hf" --adapter "$out/ad-card" --device "$card" \
    --prompt "The name of the dragon in Pipville is" --max-tokens 6 --temperature 0 \
    2>"$out/generate.log") || [ -z "$gen" ]; then
  echo "cli: generate on $card FAILED or wrote nothing"; tail -5 "$out/generate.log"; exit 1
fi
# The losses from each run's training_summary.json (full precision), not its log lines.
python3 - "$out" "$card" "${secs[ref]}" "${secs[card]}" "${evals[ref]}" "${evals[card]}" "$gen" \
  <<'PY' || status=1
import json, sys
out, card, ms_cpu, ms_card, e_cpu, e_gpu, gen = sys.argv[1:]
def losses(run):
    h = json.load(open("%s/ad-%s/training_summary.json" % (out, run)))["history"]
    return h[0]["loss"], h[-1]["loss"], len(h)
(f_cpu, l_cpu, n_cpu), (f_gpu, l_gpu, n_gpu) = losses("ref"), losses("card")
e_cpu, e_gpu = (float(x) if x else float("nan") for x in (e_cpu, e_gpu))
print("cli fine-tune: cpu loss %.4f -> %.4f (%d steps) in %s ms, eval %.4f; %s loss %.4f -> %.4f "
      "(%d steps) in %s ms, eval %.4f; %s generates:%s"
      % (f_cpu, l_cpu, n_cpu, ms_cpu, e_cpu, card, f_gpu, l_gpu, n_gpu, ms_card, e_gpu, card, gen))
checks = [("150 steps each", n_cpu == n_gpu == 150),
          ("first step's loss within 2% of the cpu's", abs(f_gpu - f_cpu) <= 0.02 * f_cpu),
          ("last loss under 1.5", l_gpu < 1.5),
          ("eval within 10% of the cpu adapter's", abs(e_gpu - e_cpu) <= 0.10 * e_cpu)]
for name, ok in checks:
    print("  cli on the card: %s: %s" % (name, "ok" if ok else "FAILED"))
sys.exit(0 if all(ok for _, ok in checks) else 1)
PY
exit $status
