"""The pipeline's phases, each called by one CLI subcommand and one Snakemake rule."""
