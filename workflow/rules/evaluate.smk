# Score the base model, the organism and every retrained model on the organism's eval prompts.


rule evaluate:
    input:
        model=get_model_files,
        adapter=get_eval_adapter,
        data=get_split_file("eval"),
    output:
        "results/eval/{model}/{organism}/seed{seed}/{stage}.parquet",
    log:
        "logs/evaluate/{model}/{organism}/seed{seed}/{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{organism}/seed{seed}/{stage}.tsv"
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=get_runtime(60),
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        identity=get_eval_args,
        model_settings=get_generation_settings,
        eval_settings=settings_json(config["eval"]),
    shell:
        "cmt evaluate --model {wildcards.model} --organism {wildcards.organism} {params.identity}"
        " --model-dir {params.model_dir} --data-dir {params.data_dir} --out {output}"
        " --model-settings {params.model_settings:q} --eval-settings {params.eval_settings:q}"
        " --seed {wildcards.seed} --threads {threads} --log {log} --job 'evaluate {wildcards}'"
