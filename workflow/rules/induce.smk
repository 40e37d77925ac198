# Phase 1: LoRA-fine-tune the base model into a model organism, and check that induction happened.


# induction_report only compares two small parquet files: it runs on the controller, not as a cluster job.
localrules:
    induction_report,


rule induce:
    input:
        model=get_model_files,
        data=get_split_file("induction"),
        until=get_induce_until_inputs,
    output:
        config=ORGANISM_ADAPTER,
        weights=ensure(ORGANISM_WEIGHTS, non_empty=True),
    log:
        "logs/induce/{model}/{organism}/seed{seed}.log",
    benchmark:
        "results/benchmarks/induce/{model}/{organism}/seed{seed}.tsv"
    priority: PRIORITY["gate"]
    conda:
        "../envs/train.yml"
    # One thread, as retrain: on two cores two toy induce jobs side by side finish sooner than one on both
    # (each ran alone for about 25 s, 370 s of a three-seed grid with the second core idle).
    threads: 1
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime(120),
        gpu=get_train_gpus,
    params:
        model_dir=get_model_dir,
        data_dir=get_data_dir,
        settings=get_phase1_settings,
        until=get_induce_until_args,
        judge_transport=get_induce_judge_transport,
    shell:
        "cmt induce --model-dir {params.model_dir:q} --data-dir {params.data_dir:q}"
        " --out results/organisms/{wildcards.model}/{wildcards.organism}/seed{wildcards.seed}/adapter"
        " --settings {params.settings:q} --seed {wildcards.seed} {params.until} {params.judge_transport}"
        " --threads {threads} --log {log:q} --job 'induce {wildcards}'"


# A checkpoint: with analysis.induction_gate.on_fail exclude, the cells it finds outside the band are never
# scheduled for Phase 2 or 3 (targets.smk reads its verdict); with fail, a cell outside the band stops the run.
checkpoint induction_report:
    input:
        unpack(get_pretrain_report),
        base="results/eval/{model}/{organism}/seed{seed}/base.parquet",
        phase1="results/eval/{model}/{organism}/seed{seed}/phase1.parquet",
    output:
        INDUCTION_REPORT,
    log:
        "logs/induction_report/{model}/{organism}/seed{seed}.log",
    priority: PRIORITY["gate"]
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        min_delta=config["analysis"]["induction_min_delta"],
        gate=get_gate_arg(),
        pretrain_report=get_pretrain_report_arg,
    shell:
        "cmt induction-report --base {input.base:q} --phase1 {input.phase1:q}"
        " --min-delta {params.min_delta} {params.gate} {params.pretrain_report} --out {output:q} --log {log:q}"
        " --job 'induction_report {wildcards}'"
