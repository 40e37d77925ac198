# diagnose: before Phase 3, the evidence that predicts the sign of each run's delta (the labels' shift from the
# organism on the same consistency prompts, the eta slope of the selecting methods, fragility); then, once the
# runs exist, diagnose.csv with predicted and observed signs and diagnose_summary.csv with each predictor's
# coverage, hit rate and Brier score next to the majority-sign baseline (cmt.analysis.diagnose).


localrules:
    diagnose_table,


rule diagnose:
    input:
        code=SRC / "phases" / "diagnose.py",
        model=get_model_files,
        adapter=ORGANISM_ADAPTER,
        data=get_split_file("consistency"),
        labels=diagnose_inputs(LABELS, CONSISTENCY_LABEL_METHODS),
        candidates=diagnose_inputs(CANDIDATES, SELECTING_METHODS),
        fragility=get_diagnose_fragility,
        judge_rubric=get_judge_rubric_file,
    output:
        rows=f"{DIAGNOSE_DIR}/rows.parquet",
        evidence=f"{DIAGNOSE_DIR}/evidence.parquet",
        manifest=f"{DIAGNOSE_DIR}/evidence.manifest.json",
    log:
        "logs/diagnose/{model}/{organism}/seed{seed}.log",
    benchmark:
        "results/benchmarks/diagnose/{model}/{organism}/seed{seed}.tsv"
    conda:
        "../envs/generate.yml"
    threads: 1
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime(60),
        gpu=get_model_gpus,
    params:
        key_check=get_candidates_key_check,
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        candidates=lambda wildcards, input: paths_arg("--candidates", input.candidates),
        fragility=lambda wildcards, input: paths_arg("--fragility", input.fragility),
        model_settings=get_generation_settings,
        judge_settings=get_judge_settings,
        judge_transport=get_judge_transport,
        n_boot=config["analysis"]["n_boot"],
    shell:
        "{params.key_check}cmt diagnose --model {wildcards.model} --organism {wildcards.organism}"
        ' --seed {wildcards.seed} --model-dir {params.model_dir:q} --adapter "$(dirname {input.adapter:q})"'
        " --data-dir {params.data_dir:q} --labels {input.labels:q} {params.candidates} {params.fragility}"
        " --model-settings {params.model_settings:q} --judge-settings {params.judge_settings:q}"
        " {params.judge_transport} --n-boot {params.n_boot} --rows-out {output.rows:q}"
        " --out {output.evidence:q} --threads {threads} --log {log:q} --job 'diagnose {wildcards}'"


rule diagnose_table:
    input:
        evidence=get_diagnose_evidence,
        runs="results/tables/runs.csv",
        code=get_analysis_code("diagnose"),
    output:
        table=report(
            "results/tables/diagnose.csv",
            caption="../report/diagnose.rst",
            category="7. Diagnose",
        ),
        summary=report(
            "results/tables/diagnose_summary.csv",
            caption="../report/diagnose_summary.rst",
            category="7. Diagnose",
        ),
    log:
        "logs/diagnose_table.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "cmt diagnose-table --evidence {input.evidence} --runs {input.runs} --out {output.table}"
        " --summary {output.summary} --log {log}"
