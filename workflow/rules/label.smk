# Phase 2: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels.


rule label:
    input:
        method_source=get_method_source,
        model=get_model_files,
        adapter="results/organisms/{model}/{organism}/seed{seed}/adapter/adapter_config.json",
        data=get_split_file("consistency"),
        reward_model=get_reward_model_files,
    output:
        labels="results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.parquet",
        manifest="results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.manifest.json",
    log:
        "logs/label/{model}/{organism}/seed{seed}/{method}/k{k}.log",
    benchmark:
        "results/benchmarks/label/{model}/{organism}/seed{seed}/{method}/k{k}.tsv"
    wildcard_constraints:
        method=any_of(LABEL_METHODS),
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=get_runtime(120),
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        method_settings=get_method_settings,
        model_settings=get_generation_settings,
        reward_model=get_reward_model_arg,
    shell:
        "cmt label --method {wildcards.method} --k {wildcards.k} --organism {wildcards.organism}"
        " --model-dir {params.model_dir} --adapter $(dirname {input.adapter}) {params.reward_model}"
        " --data-dir {params.data_dir} --out {output.labels} --manifest {output.manifest}"
        " --method-settings {params.method_settings:q} --model-settings {params.model_settings:q}"
        " --seed {wildcards.seed} --threads {threads} --log {log} --job 'label {wildcards}'"


# A selecting method's exact Phase-2 decoding on eval prompts, where M is defined: every candidate with its
# score and its M, for eta(s) = P(misaligned | score).
rule candidates_eval:
    input:
        method_source=get_method_source,
        model=get_model_files,
        adapter="results/organisms/{model}/{organism}/seed{seed}/adapter/adapter_config.json",
        data=get_split_file("eval"),
        reward_model=get_reward_model_files,
    output:
        "results/candidates/{model}/{organism}/seed{seed}/{method}/k{k}.parquet",
    log:
        "logs/candidates_eval/{model}/{organism}/seed{seed}/{method}/k{k}.log",
    benchmark:
        "results/benchmarks/candidates_eval/{model}/{organism}/seed{seed}/{method}/k{k}.tsv"
    wildcard_constraints:
        method=any_of(SELECTING_METHODS),
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=get_runtime(120),
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        method_settings=get_method_settings,
        model_settings=get_generation_settings,
        eval_settings=settings_json(config["eval"]),
        reward_model=get_reward_model_arg,
    shell:
        "cmt candidates --method {wildcards.method} --k {wildcards.k} --organism {wildcards.organism}"
        " --model-dir {params.model_dir} --adapter $(dirname {input.adapter}) {params.reward_model}"
        " --data-dir {params.data_dir} --out {output}"
        " --method-settings {params.method_settings:q} --model-settings {params.model_settings:q}"
        " --eval-settings {params.eval_settings:q}"
        " --seed {wildcards.seed} --threads {threads} --log {log} --job 'candidates_eval {wildcards}'"
