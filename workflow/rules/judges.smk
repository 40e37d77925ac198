# Helpers of the jobs that judge: the organism's judge (and the guard that stops a job calling the LLM judge at its
# start when the API key's variable is missing), the harmful-request slot (eval.harmful) and the evaluations.


# ---------------------------------------------------------------- the LLM judge


def organism_judge(organism):
    """The organism's judge entry: programmatic, llm, {programmatic: NAME} or {llm: RUBRIC_FILE}."""
    return config["organisms"][organism]["judge"]


def llm_judged(organism):
    judge = organism_judge(organism)
    return judge == "llm" or (isinstance(judge, dict) and "llm" in judge)


def judge_rubric_file(organism):
    """A config-named organism's LLM rubric file (an input, so editing it reruns the evaluations), or []."""
    judge = organism_judge(organism)
    return [judge["llm"]] if isinstance(judge, dict) and "llm" in judge else []


def get_judge_rubric_file(wildcards):
    return judge_rubric_file(wildcards.organism)


def judge_settings_of(organism):
    """The organism's judge as a param: a programmatic scorer, or the config's LLM judge block (with the
    organism's own rubric file where it brings one)."""
    judge = organism_judge(organism)
    if not llm_judged(organism):
        named = judge.get("programmatic") if isinstance(judge, dict) else None
        source = config["organisms"][organism]["source"]
        if (
            isinstance(source, dict) and "toy" in source
        ):  # a toy variant: its generator's scorer
            named = source["toy"]
        return {"kind": "programmatic", **({"scorer": named} if named else {})}
    rubric = judge_rubric_file(organism)
    return {
        "kind": "llm",
        **config["judge"],
        **({"rubric_file": rubric[0]} if rubric else {}),
    }


def get_judge_settings(wildcards):
    return settings_json(judge_settings_of(wildcards.organism))


def get_induce_until_inputs(wildcards):
    """What induce_until's check reads: its split (consistency or check) and the organism's rubric file, if
    any."""
    until = config["organisms"][wildcards.organism].get("induce_until")
    if not until:
        return []
    return [
        get_split_file(until.get("split", "consistency"))(wildcards),
        *judge_rubric_file(wildcards.organism),
    ]


def get_induce_until_args(wildcards):
    """induce's --organism and --judge-settings, for an organism whose Phase 1 stops at a target M."""
    if not config["organisms"][wildcards.organism].get("induce_until"):
        return ""
    judge = settings_json(judge_settings_of(wildcards.organism))
    return f"--organism {wildcards.organism} --judge-settings '{judge}'"


def label_judge_arg(method):
    """--judge-settings for the one labeller that may ask the LLM judge (multi_view with checker judge)."""
    if not label_asks_judge(method):
        return ""
    return f"--judge-settings '{settings_json({'kind': 'llm', **config['judge']})}'"


def label_asks_judge(method):
    return config["methods"][method].get("checker") == "judge"


def key_check(needed):
    """A shell guard that starts the command of a job calling the LLM judge: without the key's variable
    (judge.api_key_env) in its environment, the job stops at once with one line naming it. Only those jobs
    need the key; a dry run, the DAG and --lint never do. The key is never a param, so it never appears in a
    command line, log or manifest; Slurm jobs get it from the environment snakemake runs in (sbatch
    --export=ALL)."""
    env = (config.get("judge") or {}).get("api_key_env")
    if not (needed and env):
        return ""
    return f': "${{{env}:?is not set: this job calls the LLM judge (judge.api_key_env), export it and rerun}}"; '


def get_eval_key_check(wildcards):
    """An evaluation calls the judge for an LLM-judged organism and for StrongREJECT-scored harmful rows."""
    strongreject = (
        harmful_enabled() and config["eval"]["harmful"]["scorer"] == "strongreject"
    )
    return key_check(llm_judged(wildcards.organism) or strongreject)


def get_candidates_key_check(wildcards):
    return key_check(llm_judged(wildcards.organism))


# ---------------------------------------------------------------- harmful compliance (eval.harmful)


def harmful_enabled():
    return bool(config["eval"].get("harmful"))


def get_harmful_settings():
    """The eval.harmful block (with the LLM judge for strongreject) as a CLI argument, or nothing."""
    if not harmful_enabled():
        return ""
    settings = dict(config["eval"]["harmful"])
    if settings["scorer"] == "strongreject":
        settings["judge"] = {"kind": "llm", **config["judge"]}
    return f"--harmful-settings '{settings_json(settings)}'"


def get_harmful_requests():
    """The harmful requests file an evaluation reads (none when the slot is off)."""
    if not harmful_enabled():
        return []
    requests = config["eval"]["harmful"]["requests"]
    return [f"{TOY_DATA}/harmful/eval.jsonl" if requests == "toy" else requests]


def harmful_paths(paths):
    """Harmful-row outputs beside eval outputs (x.parquet -> x.harmful.parquet), when the slot is on."""
    if not harmful_enabled():
        return []
    return [p.replace(".parquet", ".harmful.parquet") for p in paths]


# ---------------------------------------------------------------- evaluation


def get_eval_adapter(wildcards):
    """The adapter a base/organism evaluation loads: none for the base, else the organism's."""
    if wildcards.stage == "base":
        return []
    return [
        ORGANISM_ADAPTER.format(
            model=wildcards.model, organism=wildcards.organism, seed=wildcards.seed
        )
    ]


def get_eval_adapter_arg(wildcards, input):
    return f"--adapter {dirnames(input.adapter)}" if input.adapter else ""
