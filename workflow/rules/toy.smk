# The embedded toy world: synthetic organism datasets and a tiny Llama pretrained from scratch on them.


# toy_data writes a few small synthetic jsonl files in seconds: it runs on the controller, not as a cluster job.
localrules:
    toy_data,


rule toy_data:
    input:
        generator=get_toy_generators(),
    output:
        corpus="results/data/toy/corpus.jsonl",
        splits=expand(TOY_SPLIT, organism=toy_organisms(), split=SPLITS),
        references=expand(TOY_SPLIT, organism=toy_organisms(), split=REFERENCE_SPLITS),
        checks=expand(TOY_SPLIT, organism=toy_check_organisms(), split=CHECK_SPLIT),
        markers=expand(
            "results/data/toy/{organism}/organism.json", organism=toy_organisms()
        ),
        harmful=get_toy_harmful_outputs(),
    log:
        "logs/toy_data.log",
    conda:
        "../envs/train.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        organisms=toy_organism_specs(),
        settings=get_toy_settings(),
    shell:
        "cmt toy-data --out results/data/toy --organisms {params.organisms}"
        " --settings {params.settings:q} --log {log} --job 'toy_data'"


# Between-workflow cache (`snakemake --cache` with SNAKEMAKE_OUTPUT_CACHE set): another clone or config with the
# same toy data and settings restores the base instead of pretraining it (docs/benchmarks.md). Caching needs
# every file of the model folder declared, hence the multiext, and no benchmark: pretrain_report.json records the
# job's seconds instead (a cached result could not fill a benchmark file).
rule pretrain_base:
    input:
        corpus="results/data/toy/corpus.jsonl",
        evals=expand("results/data/toy/{organism}/eval.jsonl", organism=toy_organisms()),
    output:
        multiext(
            "results/models/{base}/",
            config="config.json",
            weights="model.safetensors",
            generation="generation_config.json",
            tokenizer="tokenizer.json",
            tokenizer_config="tokenizer_config.json",
            chat_template="chat_template.jinja",
            report="pretrain_report.json",
        ),
    log:
        "logs/pretrain_base/{base}.log",
    cache: "omit-software"
    conda:
        "../envs/train.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=get_runtime(60),
    params:
        eval_dirs=toy_generator_dirs(),
        settings=get_pretrain_settings,
    shell:
        "cmt pretrain --corpus {input.corpus} --eval-dir {params.eval_dirs}"
        " --out results/models/{wildcards.base} --report {output.report}"
        " --settings {params.settings:q} --threads {threads} --log {log} --job 'pretrain_base {wildcards}'"
