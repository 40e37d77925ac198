# The toy world's external reward model (dual_decoding, rejection_sampling): the toy base with a scalar head,
# trained on preference pairs that rate correct answers above wrong ones and never show misaligned behaviour.


rule train_reward_model:
    input:
        model="results/models/{base}/config.json",
        corpus="results/data/toy/corpus.jsonl",
        # Every held-out split: their prompts are excluded from the preference pairs.
        splits=expand(TOY_SPLIT, organism=toy_organisms(), split=SPLITS),
        code=[SRC / "models" / "reward_model.py", SRC / "toy" / "preferences.py"],
    output:
        config="results/models/{base}-reward/config.json",
        weights="results/models/{base}-reward/model.safetensors",
    log:
        "logs/train_reward_model/{base}.log",
    benchmark:
        "results/benchmarks/train_reward_model/{base}.tsv"
    priority: PRIORITY["reward_model"]
    conda:
        "../envs/train.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=get_runtime(60),
    params:
        data_dirs=toy_generator_dirs(),
        settings=get_reward_training_settings(),
        seed=config.get("reward_model", {}).get("seed", 0),
    shell:
        "cmt train-reward-model --model-dir results/models/{wildcards.base} --corpus {input.corpus:q}"
        ' --data-dirs {params.data_dirs:q} --out "$(dirname {output.config:q})"'
        " --settings {params.settings:q} --seed {params.seed}"
        " --threads {threads} --log {log:q} --job 'train_reward_model {wildcards}'"
