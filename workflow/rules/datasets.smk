# Organism datasets given by URL (`source: {url, sha256}` or `{base_url, files}`): fetched once, verified,
# validated and installed into resources/data/<organism>/, where every job then reads them.


# Downloads need the network, which compute nodes may lack: run on the login node.
localrules:
    fetch_dataset,


rule fetch_dataset:
    output:
        splits=expand(FETCHED_SPLIT, split=SPLITS, allow_missing=True),
        rubric="resources/data/{organism}/rubric.txt",
    log:
        "logs/fetch_dataset/{organism}.log",
    wildcard_constraints:
        organism=any_of(fetched_organisms()),
    conda:
        "../envs/analysis.yml"
    params:
        source=get_dataset_source,
    shell:
        "cmt fetch-dataset --source {params.source:q} --out resources/data/{wildcards.organism}"
        " --log {log} --job 'fetch_dataset {wildcards}'"
