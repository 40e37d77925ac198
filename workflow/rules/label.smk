# Phase 2: a consistency method turns the organism's outputs on held-out prompts into pseudo-labels.


rule label:
    input:
        method_source=get_method_source,
        model=get_model_files,
        adapter="results/organisms/{model}/{organism}/seed{seed}/adapter/adapter_config.json",
        data=get_split_file("consistency"),
    output:
        labels="results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.parquet",
        manifest="results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.manifest.json",
    log:
        "logs/label/{model}/{organism}/seed{seed}/{method}/k{k}.log",
    benchmark:
        "results/benchmarks/label/{model}/{organism}/seed{seed}/{method}/k{k}.tsv"
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        method_settings=get_method_settings,
        model_settings=get_generation_settings,
    shell:
        "cmt label --method {wildcards.method} --k {wildcards.k}"
        " --model-dir {params.model_dir} --adapter $(dirname {input.adapter})"
        " --data-dir {params.data_dir} --out {output.labels} --manifest {output.manifest}"
        " --method-settings {params.method_settings:q} --model-settings {params.model_settings:q}"
        " --seed {wildcards.seed} --threads {threads} --log {log} --job 'label {wildcards}'"
