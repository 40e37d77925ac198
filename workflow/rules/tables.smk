# Aggregate tables: one row per run, and the paper's main table per organism.


localrules:
    tables,


rule tables:
    input:
        evals=get_all_evals(),
        # The tables flag organisms that were not induced; the reports also print why.
        induction_reports=get_induction_reports(),
    output:
        runs="results/tables/runs.csv",
        main="results/tables/main.csv",
    log:
        "logs/tables.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        min_delta=config["analysis"]["induction_min_delta"],
    shell:
        "cmt tables --evals {input.evals} --min-induction-delta {params.min_delta}"
        " --runs {output.runs} --main {output.main} --log {log} --job 'tables'"
