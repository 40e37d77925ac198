# Score the base model, the organism and every retrained model on the organism's eval prompts.


rule evaluate:
    input:
        model=get_model_files,
        adapter=get_eval_adapter,
        data=get_split_file("eval"),
        harmful_requests=get_harmful_requests(),
        judge_rubric=get_judge_rubric_file,
    output:
        rows=ensure(STAGE_EVAL, non_empty=True),
        manifest=STAGE_EVAL_MANIFEST,
        harmful=harmful_paths([STAGE_EVAL]),
    log:
        "logs/evaluate/{model}/{organism}/seed{seed}/{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{organism}/seed{seed}/{stage}.tsv"
    priority: PRIORITY["gate"]  # the base and the organism: the induction gate reads both
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime(60),
        gpu=get_model_gpus,
    params:
        key_check=get_eval_key_check,
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        adapter=get_eval_adapter_arg,
        model_settings=get_generation_settings,
        eval_settings=get_stage_eval_settings,
        judge_settings=get_eval_judge_settings,
        judge_transport=get_eval_judge_transport,
        harmful=get_harmful_settings(),
    shell:
        "{params.key_check}cmt evaluate --model {wildcards.model} --organism {wildcards.organism} --stage {wildcards.stage}"
        " {params.adapter} --model-dir {params.model_dir:q} --data-dir {params.data_dir:q} --out {output.rows:q}"
        " --model-settings {params.model_settings:q} --eval-settings {params.eval_settings:q}"
        " --judge-settings {params.judge_settings:q} {params.judge_transport} {params.harmful}"
        " --harmful-out {output.harmful:q} --seed {wildcards.seed} --threads {threads} --log {log:q}"
        " --job 'evaluate {wildcards}'"


# Every retrained model of one method (all its k) in one job.
for method in config["methods"]:

    rule:
        name:
            f"evaluate_{method}"
        input:
            model=get_model_files,
            adapters=cell_paths(RETRAINED_CONFIG, method),
            data=get_split_file("eval"),
            harmful_requests=get_harmful_requests(),
            judge_rubric=get_judge_rubric_file,
        output:
            rows=ensure(cell_paths(EVAL, method), non_empty=True),
            manifests=cell_paths(EVAL_MANIFESTS, method),
            harmful=harmful_paths(main_cell_paths(EVAL, method)),
        log:
            f"logs/evaluate/{{model}}/{{organism}}/seed{{seed}}/{method}.log",
        benchmark:
            f"results/benchmarks/evaluate/{{model}}/{{organism}}/seed{{seed}}/{method}.tsv"
        conda:
            "../envs/generate.yml"
        threads: 1
        resources:
            mem_mb=get_mem_mb,
            runtime=get_runtime(60 * len(method_ks(method))),
            gpu=get_model_gpus,
        params:
            key_check=get_eval_key_check,
            method=method,
            ks=method_ks_arg(method),
            model_dir=get_model_dir,
            data_dir=get_data_dir,
            adapters=lambda wildcards, input: dirnames(input.adapters),
            model_settings=get_generation_settings,
            eval_settings=eval_settings("phase3"),
            judge_settings=get_eval_judge_settings,
            judge_transport=get_eval_judge_transport,
            harmful=get_harmful_settings(),
            harmful_ks=f"--harmful-ks {main_k(method)}" if harmful_enabled() else "",
        shell:
            "{params.key_check}cmt evaluate --model {wildcards.model} --organism {wildcards.organism} --stage phase3"
            " --method {params.method} --ks {params.ks} --adapter {params.adapters}"
            " --model-dir {params.model_dir:q} --data-dir {params.data_dir:q} --out {output.rows:q}"
            " --model-settings {params.model_settings:q} --eval-settings {params.eval_settings:q}"
            " --judge-settings {params.judge_settings:q} {params.judge_transport} {params.harmful}"
            " --harmful-out {output.harmful:q} {params.harmful_ks} --seed {wildcards.seed} --threads {threads}"
            " --log {log:q} --job 'evaluate_{params.method} {wildcards}'"
