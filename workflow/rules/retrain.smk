# Phase 3: continue the organism's LoRA on the method's pseudo-labels.


rule retrain:
    input:
        model=get_model_files,
        adapter="results/organisms/{model}/{organism}/seed{seed}/adapter/adapter_config.json",
        labels="results/labels/{model}/{organism}/seed{seed}/{method}/k{k}.parquet",
    output:
        config="results/retrained/{model}/{organism}/seed{seed}/{method}/k{k}/adapter/adapter_config.json",
        weights="results/retrained/{model}/{organism}/seed{seed}/{method}/k{k}/adapter/adapter_model.safetensors",
    log:
        "logs/retrain/{model}/{organism}/seed{seed}/{method}/k{k}.log",
    benchmark:
        "results/benchmarks/retrain/{model}/{organism}/seed{seed}/{method}/k{k}.tsv"
    wildcard_constraints:
        method=any_of(LABEL_METHODS),
    conda:
        "../envs/train.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=get_runtime(120),
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        settings=get_phase3_settings,
    shell:
        "cmt retrain --model-dir {params.model_dir} --adapter $(dirname {input.adapter})"
        " --labels {input.labels} --out $(dirname {output.config})"
        " --settings {params.settings:q} --seed {wildcards.seed}"
        " --threads {threads} --log {log} --job 'retrain {wildcards}'"


# Phase 3 for the regularisation methods (act, bct): the paired clean/wrapped losses replace labels.
rule retrain_consistency:
    input:
        method_source=get_method_source,
        model=get_model_files,
        adapter="results/organisms/{model}/{organism}/seed{seed}/adapter/adapter_config.json",
        clean=get_split_file("act_bct_clean"),
        wrapped=get_split_file("act_bct_wrapped"),
    output:
        config="results/retrained/{model}/{organism}/seed{seed}/{method}/k{k}/adapter/adapter_config.json",
        weights="results/retrained/{model}/{organism}/seed{seed}/{method}/k{k}/adapter/adapter_model.safetensors",
    log:
        "logs/retrain_consistency/{model}/{organism}/seed{seed}/{method}/k{k}.log",
    benchmark:
        "results/benchmarks/retrain_consistency/{model}/{organism}/seed{seed}/{method}/k{k}.tsv"
    wildcard_constraints:
        method=any_of(REGULARIZATION_METHODS),
        k="1",
    conda:
        "../envs/train.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=get_runtime(120),
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        settings=get_consistency_settings,
    shell:
        "cmt retrain-consistency --method {wildcards.method} --model-dir {params.model_dir}"
        " --adapter $(dirname {input.adapter}) --data-dir {params.data_dir} --out $(dirname {output.config})"
        " --settings {params.settings:q} --seed {wildcards.seed}"
        " --threads {threads} --log {log} --job 'retrain_consistency {wildcards}'"
