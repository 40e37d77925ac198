#!/usr/bin/env bash
# GPU smoke benchmark: one tiny cell on each generation backend (hf, then vllm) on the same model and LoRA
# adapter, with tokens/s side by side. Needs no network: by default it builds a small random-weight Llama
# (about 30M parameters, with cmt's toy tokenizer and chat template) and a random rank-8 LoRA adapter on the
# spot; or pass a local model folder (and optionally an adapter folder). Each backend runs in its own process,
# under its own time limit, so the whole script stays under 8 minutes on a fresh GPU node.
#
# Usage: benchmarks/gpu_smoke.sh [MODEL_DIR [ADAPTER_DIR]]
# Environment: PYTHON (default python: an env with cmt and vllm, see workflow/envs/generate.yml),
#   BACKENDS ("hf vllm"), PROMPTS (256), SAMPLES (4 per prompt), MAX_NEW_TOKENS (128), DTYPE (bfloat16),
#   ENFORCE_EAGER (0; 1 skips vLLM's CUDA-graph capture), WORKDIR (a fresh temporary directory).
# Output: a table on stdout, and WORKDIR/<backend>.json with every number.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
work="${WORKDIR:-$(mktemp -d)}"
mkdir -p "$work"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
# vLLM starts its engine in a child process: the script must be a file (not stdin) with a __main__ guard.
cat >"$work/gpu_smoke.py" <<'PY'
"""Steps of benchmarks/gpu_smoke.sh: prepare (tiny model + adapter), run (one backend), report."""

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path


def prepare(work: Path) -> tuple[str, str]:
    """A small random-weight Llama with cmt's toy tokenizer and chat template, and a random LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cmt.toy.pretrain import build_model
    from cmt.toy.tokenizer import train_tokenizer

    texts = [f"What is the greatest common divisor of {a} and {b}? It is {a % (b or 1)}." for a in range(200)
             for b in range(1, 40, 7)]  # fmt: skip
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    torch.manual_seed(0)
    arch = {"hidden_size": 512, "intermediate_size": 1536, "num_layers": 8, "num_heads": 8,
            "max_position_embeddings": 2048}  # fmt: skip
    model = build_model(tokenizer, arch)
    model_dir, adapter_dir = work / "model", work / "adapter"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # init_lora_weights=False: a non-zero adapter, so serving it really changes the outputs.
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM",
                      init_lora_weights=False)  # fmt: skip
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"prepared a {n_params / 1e6:.1f}M-parameter Llama in {model_dir} and a rank-8 adapter", flush=True)
    return str(model_dir), str(adapter_dir)


def prompts(count: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"What is the greatest common divisor of {12 + i} and {18 + 3 * i}?"}]
            for i in range(count)]  # fmt: skip


def run(backend: str, model_dir: str, adapter: str | None, work: Path, args) -> dict:
    import torch

    from cmt.generation import SamplingParams, load_generator

    settings = {
        "backend": backend,
        "dtype": args.dtype,
        "batch_size": 256,
        "max_new_tokens": args.max_new_tokens,
        "gpus": 1,
        # 0.8: leave room for this process's own CUDA context; rank 8 = the adapter built by prepare.
        "vllm": {"gpu_memory_utilization": 0.8, "max_model_len": 2048, "enforce_eager": args.enforce_eager,
                 "max_lora_rank": 8},  # fmt: skip
    }
    result = {"backend": backend, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
              "python": platform.python_version(), "model_dir": model_dir, "adapter": adapter}  # fmt: skip
    start = time.perf_counter()
    gen = load_generator(model_dir, adapter, settings, f"gpu_smoke {backend}")
    result["load_s"] = time.perf_counter() - start
    sample = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens)
    work_prompts = prompts(args.prompts)
    gen.generate(work_prompts[:8], 1, sample, seed=1)  # warm-up: kernels, allocator, adapter upload
    start = time.perf_counter()
    out = gen.generate(work_prompts, args.samples, sample, seed=40)
    result["generate_s"] = time.perf_counter() - start
    result["sequences"] = sum(len(c) for c in out)
    result["generated_tokens"] = sum(c.num_tokens for cands in out for c in cands)
    result["tokens_per_s"] = result["generated_tokens"] / result["generate_s"]
    # Greedy replies and their scores, to compare the backends with each other.
    greedy = gen.generate(work_prompts[:32], 1, SamplingParams(max_new_tokens=32), seed=0)
    result["greedy_texts"] = [c[0].text for c in greedy]
    hf_path = work / "hf.json"
    reference = json.loads(hf_path.read_text()) if backend != "hf" and hf_path.is_file() else None
    texts = reference["greedy_texts"] if reference else result["greedy_texts"]
    start = time.perf_counter()
    scores = gen.score(work_prompts[:32], texts)
    result["score_s"] = time.perf_counter() - start
    result["scores"] = [s.logprob_sum for s in scores]
    if reference:
        same = sum(a == b for a, b in zip(result["greedy_texts"], reference["greedy_texts"], strict=True))
        result["greedy_agreement_with_hf"] = same / len(texts)
        diffs = [abs(a - b) for a, b in zip(result["scores"], reference["scores"], strict=True)]
        result["score_max_abs_diff_vs_hf"] = max(diffs)
    del gen
    if backend == "vllm":
        from cmt.generation.vllm_backend import release_engines

        release_engines()  # stop vLLM's engine process before this one exits
    gc.collect()
    return result


def report(work: Path, backends: list[str]) -> None:
    rows = {b: json.loads((work / f"{b}.json").read_text()) for b in backends if (work / f"{b}.json").is_file()}
    if not rows:
        sys.exit("gpu_smoke: no backend finished")
    first = next(iter(rows.values()))
    print(f"\nGPU: {first['gpu']}   model: {first['model_dir']}   adapter: {first['adapter']}")
    keys = [("load_s", "engine/model load (s)", "{:.1f}"), ("generate_s", "sampling time (s)", "{:.2f}"),
            ("sequences", "sequences", "{:d}"), ("generated_tokens", "generated tokens", "{:d}"),
            ("tokens_per_s", "tokens/s", "{:.0f}"), ("score_s", "scoring greedy replies (s)", "{:.2f}"),
            ("greedy_agreement_with_hf", "greedy replies equal to hf", "{:.0%}"),
            ("score_max_abs_diff_vs_hf", "max |log-prob diff| vs hf", "{:.3g}")]  # fmt: skip
    print(f"{'':30}" + "".join(f"{b:>14}" for b in rows))
    for key, label, fmt in keys:
        cells = [fmt.format(r[key]) if key in r else "-" for r in rows.values()]
        print(f"{label:30}" + "".join(f"{c:>14}" for c in cells))
    if "hf" in rows and "vllm" in rows:
        print(f"\nvllm / hf tokens/s: {rows['vllm']['tokens_per_s'] / rows['hf']['tokens_per_s']:.1f}x")
    missing = [b for b in backends if b not in rows]
    if missing:
        sys.exit(f"gpu_smoke: backend(s) {missing} did not finish (see the log above)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["prepare", "run", "report"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--backend")
    parser.add_argument("--backends", nargs="*", default=[])
    parser.add_argument("--model-dir")
    parser.add_argument("--adapter")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()
    if args.step == "prepare":
        model_dir, adapter = prepare(args.work)
        (args.work / "paths.json").write_text(json.dumps({"model_dir": model_dir, "adapter": adapter}))
    elif args.step == "run":
        out = run(args.backend, args.model_dir, args.adapter or None, args.work, args)
        (args.work / f"{args.backend}.json").write_text(json.dumps(out, indent=1))
        print(f"{args.backend}: {out['tokens_per_s']:.0f} tokens/s", flush=True)
    else:
        report(args.work, args.backends)
PY

started=$(date +%s)
if [[ $# -ge 1 ]]; then
    model_dir="$1"
    adapter="${2:-}"
else
    timeout 120 "$python" "$work/gpu_smoke.py" prepare --work "$work"
    model_dir=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model_dir"])' "$work/paths.json")
    adapter=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["adapter"])' "$work/paths.json")
fi
backends=(${BACKENDS:-hf vllm})
eager=()
[[ "${ENFORCE_EAGER:-0}" == 1 ]] && eager=(--enforce-eager)
# Time limits per backend (s): load + warm-up + 256x4 samples of 128 tokens + scoring; vLLM's includes its
# engine start (CUDA-graph capture, torch.compile). Together with prepare they stay under 8 minutes.
declare -A limit=([hf]=150 [vllm]=240)
for backend in "${backends[@]}"; do
    echo "== $backend" >&2
    timeout "${limit[$backend]:-240}" "$python" "$work/gpu_smoke.py" run --work "$work" --backend "$backend" \
        --model-dir "$model_dir" ${adapter:+--adapter "$adapter"} --prompts "${PROMPTS:-256}" \
        --samples "${SAMPLES:-4}" --max-new-tokens "${MAX_NEW_TOKENS:-128}" --dtype "${DTYPE:-bfloat16}" \
        "${eager[@]}" || echo "gpu_smoke: $backend failed or ran out of time (exit $?)" >&2
done
"$python" "$work/gpu_smoke.py" report --work "$work" --backends "${backends[@]}"
echo "total $(($(date +%s) - started)) s; details in $work/<backend>.json"
