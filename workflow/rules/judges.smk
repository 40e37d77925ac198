# Helpers of the jobs that judge: the organism's judge (and the guard that stops a job calling the LLM judge at its
# start when the API key's variable is missing), the harmful-request slot (eval.harmful) and the evaluations.


# ---------------------------------------------------------------- the LLM judge

# The judge block's keys that change no verdict: where requests go and how they are sent, retried, cached and
# authenticated. A verdict is fixed by the judge model, its sampling (temperature, max_tokens), the rubric and
# the thresholds that turn replies into M; the judge's cache keys a reply on all but the thresholds
# (cmt.judges.llm), so a job rerun after a transport change would get the same replies from the cache. These keys
# reach the jobs through --judge-transport, a NoTrigger param, so editing them never reruns a job.
JUDGE_TRANSPORT_KEYS = (
    "base_url",  # another endpoint serving the same judge model (the cache does not key on it either)
    "api_key_env",
    "timeout",
    "max_retries",  # retries of failed requests and re-asks of unparsed replies: whether, not what, it answers
    "concurrency",
    "backoff_base",
    "backoff_max",
    "retry_after_max",
    "cache_dir",
)
# Read by the evaluations only (cmt.phases.evaluate.check_parse_failure_rate): too many unparsed verdicts fail
# the job. Other judging jobs get it as transport.
JUDGE_EVALUATION_KEYS = ("max_parse_failure_rate",)


def llm_judge_settings(evaluation=False):
    """The judge block's keys that can change a job's outputs, as its hashed --judge-settings (kind llm)."""
    unread = JUDGE_TRANSPORT_KEYS + (() if evaluation else JUDGE_EVALUATION_KEYS)
    return {
        "kind": "llm",
        **{k: v for k, v in config["judge"].items() if k not in unread},
    }


def judge_transport_arg(needed, evaluation=False):
    """--judge-transport: the rest of the judge block, which a job that calls the LLM judge needs to reach it
    but which changes none of its outputs: a NoTrigger, no rerun trigger. Nothing for the other jobs.
    """
    if not needed:
        return NoTrigger("")
    hashed = llm_judge_settings(evaluation)
    rest = {k: v for k, v in config["judge"].items() if k not in hashed}
    return NoTrigger(option_arg("--judge-transport", settings_json(rest)))


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


def judge_settings_of(organism, evaluation=False):
    """The organism's judge as a param: a programmatic scorer, or the LLM judge's verdict keys (with the
    organism's own rubric file where it brings one); `evaluation`: with the keys only evaluations read.
    """
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
        **llm_judge_settings(evaluation),
        **({"rubric_file": rubric[0]} if rubric else {}),
    }


def get_judge_settings(wildcards):
    return settings_json(judge_settings_of(wildcards.organism))


def get_judge_transport(wildcards):
    """The judge's transport, for the jobs that judge the organism's replies (candidates, diagnose)."""
    return judge_transport_arg(llm_judged(wildcards.organism))


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


def induce_asks_judge(wildcards):
    """induce_until checks M during Phase 1, with the LLM judge for an LLM-judged organism."""
    until = config["organisms"][wildcards.organism].get("induce_until")
    return bool(until) and llm_judged(wildcards.organism)


def get_induce_until_args(wildcards):
    """induce's --organism and --judge-settings, for an organism whose Phase 1 stops at a target M."""
    if not config["organisms"][wildcards.organism].get("induce_until"):
        return ""
    judge = settings_json(judge_settings_of(wildcards.organism))
    return f"--organism {wildcards.organism} " + option_arg("--judge-settings", judge)


def get_induce_judge_transport(wildcards):
    return judge_transport_arg(induce_asks_judge(wildcards))


def label_judge_arg(method):
    """--judge-settings for the one labeller that may ask the LLM judge (multi_view with checker judge)."""
    if not label_asks_judge(method):
        return ""
    return option_arg("--judge-settings", settings_json(llm_judge_settings()))


def label_asks_judge(method):
    return config["methods"][method].get("checker") == "judge"


def key_check(needed):
    """A shell guard that starts the command of a job calling the LLM judge: without the key's variable
    (judge.api_key_env) in its environment, the job stops at once with one line naming it. Only those jobs
    need the key; a dry run, the DAG and --lint never do. The key is never a param, so it never appears in a
    command line, log or manifest; Slurm jobs get it from the environment snakemake runs in (sbatch
    --export=ALL). A NoTrigger: the variable's name is transport, and renaming it reruns nothing.
    """
    env = (config.get("judge") or {}).get("api_key_env")
    if not (needed and env):
        return NoTrigger("")
    return NoTrigger(
        f': "${{{env}:?is not set: this job calls the LLM judge (judge.api_key_env), export it and rerun}}"; '
    )


def evaluate_asks_judge(wildcards):
    """An evaluation calls the judge for an LLM-judged organism and for StrongREJECT-scored harmful rows."""
    strongreject = (
        harmful_enabled() and config["eval"]["harmful"]["scorer"] == "strongreject"
    )
    return llm_judged(wildcards.organism) or strongreject


def get_eval_key_check(wildcards):
    return key_check(evaluate_asks_judge(wildcards))


def get_eval_judge_transport(wildcards):
    return judge_transport_arg(evaluate_asks_judge(wildcards), evaluation=True)


def get_candidates_key_check(wildcards):
    return key_check(llm_judged(wildcards.organism))


# ---------------------------------------------------------------- harmful compliance (eval.harmful)


def harmful_enabled():
    return bool(config["eval"].get("harmful"))


def get_harmful_settings():
    """The eval.harmful block (with the LLM judge's verdict keys for strongreject; its transport comes with
    --judge-transport) as a CLI argument, or nothing."""
    if not harmful_enabled():
        return ""
    settings = dict(config["eval"]["harmful"])
    if settings["scorer"] == "strongreject":
        settings["judge"] = llm_judge_settings()
    return option_arg("--harmful-settings", settings_json(settings))


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


def get_eval_judge_settings(wildcards):
    """An evaluation's judge: the organism's, with the keys only evaluations read."""
    return settings_json(judge_settings_of(wildcards.organism, evaluation=True))


def eval_settings(stage):
    """What an evaluation reads of the eval block: the subset size, and the sampled policy in Phase 1 only
    (cmt.phases.evaluate). The harmful slot comes with --harmful-settings."""
    block = config["eval"]
    policy = block.get("policy_samples") if stage == "phase1" else None
    return settings_json(
        {"size": block.get("size"), **({"policy_samples": policy} if policy else {})}
    )


def get_stage_eval_settings(wildcards):
    return eval_settings(wildcards.stage)
