# The stability sweep (config/stability.yaml): each swept organism's runs with its generator, stability level
# and measured fragility (the fragility records, so `snakemake results/tables/stability_summary.csv` needs no
# per-run shift job), their summary, and the figure of delta against fragility and against the level.


# A table and a figure from small files: on the controller.
localrules:
    stability,


rule stability:
    input:
        runs="results/tables/runs.csv",
        fragility=get_fragility_records,
        code=get_analysis_code("stability", "shift"),
    output:
        table="results/tables/stability.csv",
        summary=report(
            "results/tables/stability_summary.csv",
            caption="../report/stability_summary.rst",
            category="8. Stability sweep",
        ),
        figure=report(
            multiext("results/figures/stability", ".png", ".pdf"),
            caption="../report/stability_figure.rst",
            category="8. Stability sweep",
        ),
    log:
        "logs/stability.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        organisms=toy_organism_specs(),
    shell:
        "cmt stability --runs {input.runs} --fragility {input.fragility} --organisms {params.organisms}"
        " --out {output.table} --summary {output.summary} --figure results/figures/stability"
        " --log {log} --job 'stability'"
