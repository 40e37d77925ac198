# Phase 3: continue the organism's LoRA on the method's pseudo-labels (one job per method, all its k).

for method in LABEL_METHODS:

    rule:
        name:
            f"retrain_{method}"
        input:
            model=get_model_files,
            adapter=ORGANISM_ADAPTER,
            labels=cell_paths(LABELS, method),
        output:
            config=cell_paths(RETRAINED_CONFIG, method),
            weights=ensure(cell_paths(RETRAINED_WEIGHTS, method), non_empty=True),
        log:
            f"logs/retrain/{{model}}/{{organism}}/seed{{seed}}/{method}.log",
        benchmark:
            f"results/benchmarks/retrain/{{model}}/{{organism}}/seed{{seed}}/{method}.tsv"
        conda:
            "../envs/train.yml"
        threads: 1
        resources:
            mem_mb=get_mem_mb,
            runtime=get_runtime(120 * len(method_ks(method))),
            gpu=get_train_gpus,
        params:
            method=method,
            model_dir=get_model_dir,
            settings=get_retrain_settings_of(method),
            out_dirs=lambda wildcards, output: dirnames(output.config),
        shell:
            'cmt retrain --model-dir {params.model_dir:q} --adapter "$(dirname {input.adapter:q})"'
            " --labels {input.labels:q} --out {params.out_dirs}"
            " --settings {params.settings:q} --seed {wildcards.seed}"
            " --threads {threads} --log {log:q} --job 'retrain_{params.method} {wildcards}'"


# Phase 3 for the regularisation methods (act, bct): the paired clean/wrapped losses replace labels.
for method in REGULARIZATION_METHODS:

    rule:
        name:
            f"retrain_{method}"
        input:
            code=method_code(method),
            model=get_model_files,
            adapter=ORGANISM_ADAPTER,
            clean=get_split_file("act_bct_clean"),
            wrapped=get_split_file("act_bct_wrapped"),
            gate=INDUCTION_REPORT,
        output:
            config=cell_paths(RETRAINED_CONFIG, method),
            weights=ensure(cell_paths(RETRAINED_WEIGHTS, method), non_empty=True),
        log:
            f"logs/retrain/{{model}}/{{organism}}/seed{{seed}}/{method}.log",
        benchmark:
            f"results/benchmarks/retrain/{{model}}/{{organism}}/seed{{seed}}/{method}.tsv"
        conda:
            "../envs/train.yml"
        threads: 1
        resources:
            mem_mb=get_mem_mb,
            runtime=get_runtime(120),
            gpu=get_train_gpus,
        params:
            method=method,
            model_dir=get_model_dir,
            data_dir=get_data_dir,
            settings=get_consistency_settings_of(method),
            out_dirs=lambda wildcards, output: dirnames(output.config),
        shell:
            "cmt retrain-consistency --method {params.method} --model-dir {params.model_dir:q}"
            ' --adapter "$(dirname {input.adapter:q})" --data-dir {params.data_dir:q} --out {params.out_dirs}'
            " --settings {params.settings:q} --seed {wildcards.seed}"
            " --threads {threads} --log {log:q} --job 'retrain_{params.method} {wildcards}'"
