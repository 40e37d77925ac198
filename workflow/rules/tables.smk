# Aggregate tables and figures, written from the per-row artefacts, and their places in the HTML report
# (snakemake --report results/report.html).


report: "../report/workflow.rst"


# Seconds of work on small files: they run on the controller, never as cluster jobs.
localrules:
    tables,
    eta,
    figures,


rule tables:
    input:
        evals=get_all_evals,
        # The tables flag organisms that were not induced; the reports also print why.
        induction_reports=get_induction_reports(),
        code=get_analysis_code("runs", "tables", "induction"),
    output:
        runs=report(
            "results/tables/runs.csv",
            caption="../report/runs.rst",
            category="2. Methods and runs",
        ),
        main=report(
            "results/tables/main.csv",
            caption="../report/main.rst",
            category="1. Main result",
        ),
        methods=report(
            "results/tables/methods.csv",
            caption="../report/methods.rst",
            category="2. Methods and runs",
        ),
        kscaling=report(
            "results/tables/kscaling.csv",
            caption="../report/kscaling.rst",
            category="3. k-scaling",
        ),
        controls=report(
            "results/tables/controls.csv",
            caption="../report/controls.rst",
            category="1. Main result",
        ),
        induction=report(
            "results/tables/induction.csv",
            caption="../report/induction.rst",
            category="2. Methods and runs",
        ),
    log:
        "logs/tables.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        min_delta=config["analysis"]["induction_min_delta"],
        instruct=get_instruct_arg(),
        main_k=get_main_k_arg(),
        seed=config["analysis"]["seed"],
        n_boot=config["analysis"]["n_boot"],
        validity=get_run_validity(),
    shell:
        "cmt tables --evals {input.evals} --min-induction-delta {params.min_delta}"
        " --runs {output.runs} --main {output.main} --methods {output.methods} --kscaling {output.kscaling}"
        " --controls {output.controls} --validity {params.validity:q}"
        " --induction-reports {input.induction_reports} --induction {output.induction}"
        " --instruct {params.instruct} {params.main_k} --seed {params.seed} --n-boot {params.n_boot}"
        " --log {log} --job 'tables'"


# eta(s) = P(misaligned | score) from every candidate of the selecting methods on eval prompts.
rule eta:
    input:
        candidates=get_candidates,
        code=get_analysis_code("eta"),
    output:
        eta=report(
            "results/tables/eta.csv",
            caption="../report/eta.rst",
            category="4. eta(s)",
        ),
        summary=report(
            "results/tables/eta_summary.csv",
            caption="../report/eta_summary.rst",
            category="4. eta(s)",
        ),
    log:
        "logs/eta.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        bins=config["analysis"]["eta_bins"],
        min_bin=config["analysis"]["eta_min_bin"],
        seed=config["analysis"]["seed"],
        n_boot=config["analysis"]["n_boot"],
    shell:
        "cmt eta --candidates {input.candidates} --out {output.eta} --summary {output.summary}"
        " --n-bins {params.bins} --min-bin {params.min_bin} --seed {params.seed} --n-boot {params.n_boot} --log {log} --job 'eta'"


rule figures:
    input:
        runs="results/tables/runs.csv",
        methods="results/tables/methods.csv",
        kscaling="results/tables/kscaling.csv",
        eta="results/tables/eta.csv",
        eta_summary="results/tables/eta_summary.csv",
        controls="results/tables/controls.csv",
        # the cells the induction gate left out, named in the delta figure
        induction="results/tables/induction.csv",
        # delta against the distribution shift, when analysis.shift measures it
        shift=get_shift_table(),
        code=get_analysis_code("figures", via_reports=False),
    output:
        delta=report(
            multiext("results/figures/delta_by_method", ".png", ".pdf"),
            caption="../report/delta_by_method.rst",
            category="1. Main result",
        ),
        eta_rank=report(
            multiext("results/figures/eta_rank", ".png", ".pdf"),
            caption="../report/eta_rank.rst",
            category="4. eta(s)",
        ),
        eta_zscore=report(
            multiext("results/figures/eta_zscore", ".png", ".pdf"),
            caption="../report/eta_zscore.rst",
            category="4. eta(s)",
        ),
        kscaling=report(
            multiext("results/figures/kscaling", ".png", ".pdf"),
            caption="../report/kscaling_figure.rst",
            category="3. k-scaling",
        ),
        delta_vs_shift=get_shift_figures(),
    log:
        "logs/figures.log",
    conda:
        "../envs/analysis.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "cmt figures --tables-dir results/tables --out-dir results/figures --log {log} --job 'figures'"
