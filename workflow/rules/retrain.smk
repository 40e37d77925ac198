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
    conda:
        "../envs/train.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        settings=get_phase3_settings,
    shell:
        "cmt retrain --model-dir {params.model_dir} --adapter $(dirname {input.adapter})"
        " --labels {input.labels} --out $(dirname {output.config})"
        " --settings {params.settings:q} --seed {wildcards.seed}"
        " --threads {threads} --log {log} --job 'retrain {wildcards}'"
