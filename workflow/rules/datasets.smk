# Organism datasets given as `source: {url, sha256}`: fetched once, verified, validated and unpacked into
# resources/data/<organism>/, where every job then reads them.


# Downloads need the network, which compute nodes may lack: run on the login node.
localrules:
    fetch_dataset,


rule fetch_dataset:
    output:
        splits=expand(
            "resources/data/{{organism}}/{split}.jsonl",
            split=[
                "induction",
                "consistency",
                "act_bct_clean",
                "act_bct_wrapped",
                "eval",
            ],
        ),
        rubric="resources/data/{organism}/rubric.txt",
    log:
        "logs/fetch_dataset/{organism}.log",
    wildcard_constraints:
        organism=any_of(url_organisms()),
    conda:
        "../envs/analysis.yml"
    params:
        url=get_dataset_url,
        sha256=get_dataset_sha256,
    shell:
        "cmt fetch-dataset --url {params.url:q} --sha256 {params.sha256} --out resources/data/{wildcards.organism}"
        " --log {log} --job 'fetch_dataset {wildcards}'"
