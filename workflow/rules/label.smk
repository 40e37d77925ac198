# Phase 2. label_<m>: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels.
# candidates_eval_<m>: a selecting method's exact Phase-2 decoding on eval prompts, where M is defined: every
# candidate with its score and its M, for eta(s) = P(misaligned | score).
# Both kinds share one rule body and differ only in the splits read, the files written and a few arguments. One job
# per method covers all of its k (one process, one file per k): editing a method's module or config subtree
# reruns that method's jobs only.


def label_outputs(method):
    return {
        "rows": ensure(cell_paths(LABELS, method), non_empty=True),
        "manifests": cell_paths(LABEL_MANIFESTS, method),
    }


def label_manifests(wildcards, output):
    """The labeller's manifests (a param function of `output`: paths only, as such params are no trigger)."""
    return paths_arg("--manifest", output.manifests)


def candidates_outputs(method):
    return {"rows": ensure(cell_paths(CANDIDATES, method), non_empty=True)}


def candidates_args(method):
    """The eval subset (its size, all that candidates reads of the eval block), the prompts kept for eta(s)
    and the organism's judge, which gives every candidate its M."""

    def inner(wildcards):
        prompts = config["analysis"]["eta_prompts"]
        return (
            option_arg("--eval-settings", eval_settings("phase3"))
            + " "
            + option_arg("--judge-settings", get_judge_settings(wildcards))
            + (f" --prompts {prompts}" if prompts is not None else "")
        )

    return inner


PHASE2 = {
    "label": {
        "methods": LABEL_METHODS,
        "command": "label",
        "splits": method_prompt_splits,
        "outputs": label_outputs,
        "output_args": label_manifests,
        # the LLM judge, for multi_view's checker judge
        "args": label_judge_arg,
        "judge_transport": lambda method: judge_transport_arg(label_asks_judge(method)),
        "key_check": lambda method: key_check(label_asks_judge(method)),
    },
    "candidates_eval": {
        "methods": SELECTING_METHODS,
        "command": "candidates",
        "splits": lambda method: ("eval",),
        "outputs": candidates_outputs,
        "output_args": "",
        "args": candidates_args,
        "judge_transport": lambda method: get_judge_transport,
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
            data=get_split_files(PHASE2[kind]["splits"](method)),
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
            reward_model_settings=reward_model_settings_of(method),
            output_args=PHASE2[kind]["output_args"],
            args=PHASE2[kind]["args"](method),
            judge_transport=PHASE2[kind]["judge_transport"](method),
        shell:
            "{params.key_check}cmt {params.command} --method {params.method} --ks {params.ks}"
            " --organism {wildcards.organism} --model-dir {params.model_dir:q}"
            ' --adapter "$(dirname {input.adapter:q})" {params.reward_model} {params.reward_model_settings}'
            " --data-dir {params.data_dir:q} --out {output.rows:q} {params.output_args} {params.args}"
            " {params.judge_transport} --method-settings {params.method_settings:q}"
            " --model-settings {params.model_settings:q} --seed {wildcards.seed} --threads {threads}"
            " --log {log:q} --job '{params.kind}_{params.method} {wildcards}'"
