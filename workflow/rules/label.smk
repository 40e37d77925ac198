# Phase 2. label_<m>: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels.
# candidates_eval_<m>: a selecting method's exact Phase-2 decoding on eval prompts, where M is defined: every
# candidate with its score and its M, for eta(s) = P(misaligned | score).
# Both kinds share one rule body and differ only in the split read, the files written and a few arguments. One job
# per method covers all of its k (one process, one file per k): editing a method's module or config subtree
# reruns that method's jobs only.
import shlex


def label_outputs(method):
    return {
        "rows": ensure(cell_paths(LABELS, method), non_empty=True),
        "manifests": cell_paths(LABEL_MANIFESTS, method),
    }


def label_args(method):
    """The labeller's manifests, and the LLM judge for multi_view's checker judge."""
    judge = label_judge_arg(method)

    def inner(wildcards, output):
        return " ".join(["--manifest", *output.manifests, judge]).strip()

    return inner


def candidates_outputs(method):
    return {"rows": ensure(cell_paths(CANDIDATES, method), non_empty=True)}


def candidates_args(method):
    """The eval subset, the prompts kept for eta(s) and the organism's judge, which gives every candidate its
    M."""

    def inner(wildcards):
        prompts = config["analysis"]["eta_prompts"]
        return (
            f"--eval-settings {shlex.quote(settings_json(config['eval']))}"
            f" --judge-settings {shlex.quote(get_judge_settings(wildcards))}"
            + (f" --prompts {prompts}" if prompts is not None else "")
        )

    return inner


PHASE2 = {
    "label": {
        "methods": LABEL_METHODS,
        "command": "label",
        "split": "consistency",
        "outputs": label_outputs,
        "args": label_args,
        "key_check": lambda method: key_check(label_asks_judge(method)),
    },
    "candidates_eval": {
        "methods": SELECTING_METHODS,
        "command": "candidates",
        "split": "eval",
        "outputs": candidates_outputs,
        "args": candidates_args,
        "key_check": lambda method: get_candidates_key_check,
    },
}


for kind, method in [(k, m) for k, spec in PHASE2.items() for m in spec["methods"]]:

    rule:
        name:
            f"{kind}_{method}"
        input:
            code=method_code(method),
            model=get_model_files,
            adapter=ORGANISM_ADAPTER,
            data=get_split_file(PHASE2[kind]["split"]),
            references=get_reference_file_of(method),
            # The induction gate: Phase 2 starts only after the organism passed (on_fail: fail stops here).
            gate=INDUCTION_REPORT,
            reward_model=get_reward_model_files_of(method),
            judge_rubric=get_judge_rubric_file if kind == "candidates_eval" else [],
        output:
            **PHASE2[kind]["outputs"](method),
        log:
            f"logs/{kind}/{{model}}/{{organism}}/seed{{seed}}/{method}.log",
        benchmark:
            f"results/benchmarks/{kind}/{{model}}/{{organism}}/seed{{seed}}/{method}.tsv"
        conda:
            "../envs/generate.yml"
        threads: 1
        resources:
            mem_mb=get_mem_mb,
            runtime=get_runtime(120 * len(method_ks(method))),
            gpu=get_model_gpus,
        params:
            key_check=PHASE2[kind]["key_check"](method),
            kind=kind,
            command=PHASE2[kind]["command"],
            method=method,
            ks=method_ks_arg(method),
            model_dir=get_model_dir,
            data_dir=get_data_dir,
            method_settings=method_settings(method),
            model_settings=get_generation_settings,
            reward_model=get_reward_model_arg,
            args=PHASE2[kind]["args"](method),
        shell:
            "{params.key_check}cmt {params.command} --method {params.method} --ks {params.ks}"
            " --organism {wildcards.organism} --model-dir {params.model_dir} --adapter $(dirname {input.adapter})"
            " {params.reward_model} --data-dir {params.data_dir} --out {output.rows} {params.args}"
            " --method-settings {params.method_settings:q} --model-settings {params.model_settings:q}"
            " --seed {wildcards.seed} --threads {threads} --log {log} --job '{params.kind}_{params.method} {wildcards}'"
