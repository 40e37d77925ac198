# Phase 2: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels.
# One rule per method, each job covering all of the method's k (one process, one file per k): editing a
# method's module or config subtree reruns that method's jobs only.

ORGANISM_ADAPTER = (
    "results/organisms/{model}/{organism}/seed{seed}/adapter/adapter_config.json"
)
LABELS = "results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.parquet"
LABEL_MANIFESTS = (
    "results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.manifest.json"
)
CANDIDATES = "results/candidates/{model}/{organism}/seed{seed}/{method}/k{k}.parquet"


for method in LABEL_METHODS:

    rule:
        name:
            f"label_{method}"
        input:
            code=method_code(method),
            model=get_model_files,
            adapter=ORGANISM_ADAPTER,
            data=get_split_file("consistency"),
            reward_model=get_reward_model_files_of(method),
        output:
            labels=ensure(cell_paths(LABELS, method), non_empty=True),
            manifests=cell_paths(LABEL_MANIFESTS, method),
        log:
            f"logs/label/{{model}}/{{organism}}/seed{{seed}}/{method}.log",
        benchmark:
            f"results/benchmarks/label/{{model}}/{{organism}}/seed{{seed}}/{method}.tsv"
        conda:
            "../envs/generate.yml"
        threads: 1
        resources:
            mem_mb=get_mem_mb,
            runtime=get_runtime(120 * len(method_ks(method))),
            gpu=get_model_gpus,
        params:
            method=method,
            ks=method_ks_arg(method),
            model_dir=get_model_dir,
            data_dir=get_data_dir,
            method_settings=method_settings(method),
            model_settings=get_generation_settings,
            reward_model=get_reward_model_arg,
            judge=label_judge_arg(method),
        shell:
            "cmt label --method {params.method} --ks {params.ks} --organism {wildcards.organism}"
            " --model-dir {params.model_dir} --adapter $(dirname {input.adapter}) {params.reward_model}"
            " --data-dir {params.data_dir} --out {output.labels} --manifest {output.manifests} {params.judge}"
            " --method-settings {params.method_settings:q} --model-settings {params.model_settings:q}"
            " --seed {wildcards.seed} --threads {threads} --log {log}"
            " --job 'label_{params.method} {wildcards}'"


# A selecting method's exact Phase-2 decoding on eval prompts, where M is defined: every candidate with its
# score and its M, for eta(s) = P(misaligned | score).
for method in SELECTING_METHODS:

    rule:
        name:
            f"candidates_eval_{method}"
        input:
            code=method_code(method),
            model=get_model_files,
            adapter=ORGANISM_ADAPTER,
            data=get_split_file("eval"),
            reward_model=get_reward_model_files_of(method),
        output:
            ensure(cell_paths(CANDIDATES, method), non_empty=True),
        log:
            f"logs/candidates_eval/{{model}}/{{organism}}/seed{{seed}}/{method}.log",
        benchmark:
            f"results/benchmarks/candidates_eval/{{model}}/{{organism}}/seed{{seed}}/{method}.tsv"
        conda:
            "../envs/generate.yml"
        threads: 1
        resources:
            mem_mb=get_mem_mb,
            runtime=get_runtime(120 * len(method_ks(method))),
            gpu=get_model_gpus,
        params:
            method=method,
            ks=method_ks_arg(method),
            model_dir=get_model_dir,
            data_dir=get_data_dir,
            method_settings=method_settings(method),
            model_settings=get_generation_settings,
            eval_settings=settings_json(config["eval"]),
            judge_settings=get_judge_settings,
            reward_model=get_reward_model_arg,
        shell:
            "cmt candidates --method {params.method} --ks {params.ks} --organism {wildcards.organism}"
            " --model-dir {params.model_dir} --adapter $(dirname {input.adapter}) {params.reward_model}"
            " --data-dir {params.data_dir} --out {output}"
            " --method-settings {params.method_settings:q} --model-settings {params.model_settings:q}"
            " --eval-settings {params.eval_settings:q} --judge-settings {params.judge_settings:q}"
            " --seed {wildcards.seed} --threads {threads} --log {log}"
            " --job 'candidates_eval_{params.method} {wildcards}'"
