# Distribution shift (analysis.shift): per run, the organism's cross-entropy on the labels and the realised
# KL(P3 || P1) by Monte Carlo; per organism, its fragility KL(P1(.|x) || P1(.|perturbed x)) over one fixed
# perturbation family on its eval prompts (and, as fragility_pair, KL(P1(.|clean) || P1(.|wrapped)) on its
# act_bct pairs). Then shift.csv with the correlations of delta with each measure, and harmful.csv from the
# eval slot's harmful rows.

for method in config["methods"] if shift_enabled() else []:

    rule:
        name:
            f"shift_{method}"
        input:
            model=get_model_files,
            organism=ORGANISM_ADAPTER,
            adapters=shift_cell_paths(RETRAINED_CONFIG, method),
            labels=shift_cell_paths(LABELS, method) if method in LABEL_METHODS else [],
            data=get_split_files(get_shift_splits()),
        output:
            ensure(shift_cell_paths(SHIFT_RECORDS, method), non_empty=True),
        log:
            f"logs/shift/{{model}}/{{organism}}/seed{{seed}}/{method}.log",
        benchmark:
            f"results/benchmarks/shift/{{model}}/{{organism}}/seed{{seed}}/{method}.tsv"
        conda:
            "../envs/generate.yml"
        threads: 1
        resources:
            mem_mb=get_mem_mb,
            runtime=get_runtime(60 * len(shift_ks(method))),
            gpu=get_model_gpus,
        params:
            method=method,
            ks=" ".join(str(k) for k in shift_ks(method)),
            model_dir=get_model_dir,
            data_dir=get_data_dir,
            adapters=lambda wildcards, input: dirnames(input.adapters),
            labels=lambda wildcards, input: paths_arg("--labels", input.labels),
            model_settings=get_generation_settings,
            shift=get_shift_args(),
        shell:
            "cmt shift --model {wildcards.model} --organism {wildcards.organism} --seed {wildcards.seed}"
            " --method {params.method} --ks {params.ks} --model-dir {params.model_dir:q}"
            ' --organism-adapter "$(dirname {input.organism:q})" --adapter {params.adapters} {params.labels}'
            " --data-dir {params.data_dir:q} {params.shift} --model-settings {params.model_settings:q}"
            " --out {output:q} --threads {threads} --log {log:q} --job 'shift_{params.method} {wildcards}'"


rule fragility:
    input:
        model=get_model_files,
        organism=ORGANISM_ADAPTER,
        eval_prompts=get_split_file("eval"),
        clean=get_split_file("act_bct_clean"),
        wrapped=get_split_file("act_bct_wrapped"),
    output:
        FRAGILITY,
    log:
        "logs/fragility/{model}/{organism}/seed{seed}.log",
    benchmark:
        "results/benchmarks/fragility/{model}/{organism}/seed{seed}.tsv"
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime(60),
        gpu=get_model_gpus,
    params:
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        model_settings=get_generation_settings,
        shift=get_fragility_args(),
    shell:
        "cmt fragility --model {wildcards.model} --organism {wildcards.organism} --seed {wildcards.seed}"
        ' --model-dir {params.model_dir:q} --organism-adapter "$(dirname {input.organism:q})"'
        " --data-dir {params.data_dir:q} {params.shift} --model-settings {params.model_settings:q}"
        " --out {output:q} --threads {threads} --log {log:q} --job 'fragility {wildcards}'"


# The paper's cross-model measure, with two or more models: KL(P1_A || P1_B) on the consistency prompts.
rule cross_model_kl:
    input:
        model_a=cross_model_side("a", get_model_files),
        model_b=cross_model_side("b", get_model_files),
        adapter_a=get_cross_model_adapter("a"),
        adapter_b=get_cross_model_adapter("b"),
        prompts=get_split_file("consistency"),
    output:
        CROSS_MODEL,
    log:
        "logs/cross_model_kl/{organism}/seed{seed}/{model_a}__{model_b}.log",
    benchmark:
        "results/benchmarks/cross_model_kl/{organism}/seed{seed}/{model_a}__{model_b}.tsv"
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        # both models are loaded at once
        mem_mb=lambda wildcards: sum(
            get_mem_mb(SimpleNamespace(model=m))
            for m in (wildcards.model_a, wildcards.model_b)
        ),
        runtime=get_runtime(60),
        gpu=lambda wildcards: max(
            get_model_gpus(SimpleNamespace(model=m))
            for m in (wildcards.model_a, wildcards.model_b)
        ),
    params:
        dir_a=cross_model_side("a", get_model_dir),
        dir_b=cross_model_side("b", get_model_dir),
        settings_a=cross_model_side("a", get_generation_settings),
        settings_b=cross_model_side("b", get_generation_settings),
        data_dir=get_data_dir,
        shift=get_fragility_args(),
    shell:
        "cmt cross-kl --organism {wildcards.organism} --seed {wildcards.seed} --data-dir {params.data_dir:q}"
        " --model-a {wildcards.model_a} --model-a-dir {params.dir_a:q}"
        ' --adapter-a "$(dirname {input.adapter_a:q})" --settings-a {params.settings_a:q}'
        " --model-b {wildcards.model_b} --model-b-dir {params.dir_b:q}"
        ' --adapter-b "$(dirname {input.adapter_b:q})" --settings-b {params.settings_b:q} {params.shift}'
        " --out {output:q} --threads {threads} --log {log:q} --job 'cross_model_kl {wildcards}'"


rule cross_model_table:
    input:
        records=get_cross_model_records,
        code=get_analysis_code("shift"),
    output:
        report(
            "results/tables/cross_model_kl.csv",
            caption="../report/cross_model_kl.rst",
            category="5. Distribution shift",
        ),
    log:
        "logs/cross_model_table.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "cmt cross-model-table --records {input.records} --out {output} --log {log} --job 'cross_model_table'"


# Small files into small tables: on the controller.
localrules:
    shift_table,
    harmful_table,
    cross_model_table,


rule shift_table:
    input:
        records=get_shift_records,
        fragility=get_fragility_records,
        runs="results/tables/runs.csv",
        code=get_analysis_code("shift"),
    output:
        table=report(
            "results/tables/shift.csv",
            caption="../report/shift.rst",
            category="5. Distribution shift",
        ),
        correlations=report(
            "results/tables/shift_correlations.csv",
            caption="../report/shift_correlations.rst",
            category="5. Distribution shift",
        ),
    log:
        "logs/shift_table.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "cmt shift-table --records {input.records} --fragility {input.fragility} --runs {input.runs}"
        " --out {output.table} --correlations {output.correlations} --log {log} --job 'shift_table'"


rule harmful_table:
    input:
        rows=get_harmful_rows,
        runs="results/tables/runs.csv",
        code=get_analysis_code("harmful"),
    output:
        table=report(
            "results/tables/harmful.csv",
            caption="../report/harmful.rst",
            category="6. Harmful compliance",
        ),
        summary=report(
            "results/tables/harmful_summary.csv",
            caption="../report/harmful_summary.rst",
            category="6. Harmful compliance",
        ),
        controls=report(
            "results/tables/harmful_controls.csv",
            caption="../report/harmful_controls.rst",
            category="6. Harmful compliance",
        ),
    log:
        "logs/harmful_table.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        seed=config["analysis"]["seed"],
        n_boot=config["analysis"]["n_boot"],
        max_nonanswer_rise=config["analysis"]["validity"]["max_nonanswer_rise"],
    shell:
        "cmt harmful-table --rows {input.rows} --runs {input.runs} --out {output.table}"
        " --summary {output.summary} --controls {output.controls} --seed {params.seed}"
        " --n-boot {params.n_boot} --max-nonanswer-rise {params.max_nonanswer_rise}"
        " --log {log} --job 'harmful_table'"
