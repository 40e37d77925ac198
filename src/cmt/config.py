"""Config validation with messages that name the key path and what is allowed there.

`check_workflow_config` is everything the workflow checks before it plans a job; `config_errors` is the schema
part of it alone. `config_file_errors` reads the YAML files themselves, which Snakemake's loader does not check for
a key given twice; `load_config_files` merges files as `snakemake --configfile A B` does (`cmt config check`).
"""

from __future__ import annotations

from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


# ---------------------------------------------------------------- the files


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records each key given twice in one mapping. PyYAML (and so Snakemake) keeps the last
    silently: a second `methods:` block would drop the first without a word."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[object, int, int]] = []  # (key, first line, repeated line), 1-based

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    self.duplicates.append((key, seen[key], line))
                else:
                    seen[key] = line
            except TypeError:  # an unhashable key: the base constructor names it below
                pass
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> tuple[object, list[tuple[object, int, int]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config file ({err})") from None
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: {where}not valid YAML ({problem})") from None
    finally:
        loader.dispose()
    return data, loader.duplicates


def _duplicate_errors(path: Path, duplicates) -> list[str]:
    return [f"{path}: line {line}: key {key!r} given again (first at line {first}); YAML keeps only the last, "
            "so the first would be lost" for key, first, line in sorted(duplicates, key=lambda d: d[2])]  # fmt: skip


def config_file_errors(paths) -> list[str]:
    """Keys given twice in one mapping of each config file, one line each naming the file and both lines."""
    errors = []
    for path in map(Path, paths):
        try:
            errors += _duplicate_errors(path, _read_yaml(path)[1])
        except ConfigError as err:
            errors.append(str(err))
    return errors


def _merge(base: dict, update: dict) -> dict:
    """`update` over `base`, recursing where both sides are mappings (snakemake.utils.update_config's rule)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config_files(paths) -> dict:
    """The config that `snakemake --configfile PATH...` gets: each file read (ConfigError naming the file and
    line for bad YAML, a repeated key or a top level that is no mapping), later files merged over earlier ones."""
    config: dict = {}
    problems = []
    for path in map(Path, paths):
        data, duplicates = _read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}"
            )
        problems += _duplicate_errors(path, duplicates)
        config = _merge(config, data)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _resolve(schema: dict, root: dict) -> dict:
    """Follow local `$ref`s ("#/$defs/x") and merge their properties into one view."""
    merged = dict(schema)
    ref = schema.get("$ref")
    if ref and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        target = _resolve(target, root)
        merged["properties"] = {**target.get("properties", {}), **schema.get("properties", {})}
    return merged


def _format(error, root: dict) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(_resolve(error.schema, root).get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        return f"config key {path}: unknown key(s) {unexpected}; allowed: {allowed}"
    if error.validator == "propertyNames":
        return f"config key {path}: {error.message}"
    if error.validator == "enum":
        return f"config key {path}: {error.instance!r} is not allowed; valid values: {error.validator_value}"
    if error.validator == "required":
        return f"config key {path}: {error.message}"
    if error.validator == "oneOf" and error.context:
        options = "; ".join(sorted({e.message for e in error.context}))
        return f"config key {path}: {error.instance!r} matches no allowed form ({options})"
    return f"config key {path}: {error.message}"


def config_errors(config: dict, schema_path: str | Path) -> list[str]:
    """Every schema violation in `config`, one readable line each (empty when valid)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [_format(e, schema) for e in errors]


def check_config(config: dict, schema_path: str | Path) -> None:
    errors = config_errors(config, schema_path)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------- the workflow's checks beyond the schema


def _method_errors(config: dict) -> list[str]:
    """k-scaling methods the registry does not know or that select nothing. (An unknown name under `methods` is
    the schema's unknown key: its method subtrees are exactly the registry's.)"""
    from cmt.methods.registry import get_spec, method_names

    known = method_names()
    errors = []
    kscaling = config.get("kscaling")
    listed = kscaling.get("methods") if isinstance(kscaling, dict) else None
    if isinstance(listed, list):
        selecting = method_names(selects=True)
        unknown = [m for m in listed if m not in known]
        if unknown:
            errors.append(f"config key kscaling.methods: unknown method(s) {unknown}; valid: {selecting}")
        plain = [m for m in listed if m in known and not get_spec(m).selects]
        if plain:
            errors.append(
                f"config key kscaling.methods: {plain} draw no k candidates, so k cannot scale; "
                f"methods that select: {selecting}"
            )
    return errors


def _is_toy(source) -> bool:
    """`toy`, or a toy variant {toy: GENERATOR, stability: LEVEL} (cmt.organisms.toy_source)."""
    from cmt.organisms import toy_source

    return toy_source("", source) is not None


def _local_path(source) -> str | None:
    return source["path"] if isinstance(source, dict) and "path" in source else None


def _semantic_errors(config: dict) -> list[str]:
    """What a schema cannot say: keys needed because of others, and local folders that must exist.

    Reads the config before Snakemake's `validate` fills defaults, so optional keys are read with `.get`.
    """
    from cmt.methods.registry import get_spec

    errors = []
    toy = config.get("toy") or {}
    judge = "judge" in config
    models, organisms, methods = config["models"], config["organisms"], config["methods"]

    for name, spec in models.items():
        missing = [key for key in ("tokenizer", "model", "pretrain") if key not in toy]
        if _is_toy(spec["source"]) and missing:
            keys = ", ".join(f"toy.{key}" for key in missing)
            errors.append(
                f"config keys {keys} are missing: model {name} has source toy, and the toy base is built "
                "from them"
            )
        for key in ("pretrain_seed", "base_per_seed"):
            if key in spec and spec[key] is not False and not _is_toy(spec["source"]):
                errors.append(
                    f"config key models.{name}.{key}: model {name} is not a toy model, and only the toy "
                    "base is pretrained here (remove the key, or give the model source toy)"
                )
    local_models = {f"models.{name}": spec["source"] for name, spec in models.items()}
    if "reward_model" in config:
        local_models["reward_model"] = config["reward_model"]["source"]
    for key, source in local_models.items():
        path = _local_path(source)
        if path is not None and not Path(path, "config.json").is_file():
            errors.append(
                f"config key {key}.source.path: {path!r} is not a Hugging Face model directory "
                "(no config.json there)"
            )

    for generator in toy.get("corpus_generators") or []:
        if generator not in toy.get("corpus", {}):
            errors.append(
                f"config key toy.corpus.{generator} is missing: toy.corpus_generators lists {generator}, whose "
                "base-corpus rows need a size"
            )
    for name, spec in organisms.items():
        from cmt.organisms import toy_source

        generator = (toy_source(name, spec["source"]) or (name,))[0]
        if _is_toy(spec["source"]) and generator not in toy.get("corpus", {}):
            errors.append(
                f"config key toy.corpus.{generator} is missing: organism {name} is generated by the toy world's "
                f"{generator} generator and needs a base-corpus size"
            )
        listed = toy.get("corpus_generators")
        if _is_toy(spec["source"]) and listed and generator not in listed:
            errors.append(
                f"config key toy.corpus_generators lacks {generator}: organism {name} is generated by it, and "
                "a base without its corpus rows never learned the task"
            )
        path = _local_path(spec["source"])
        if path is not None and not Path(path, "eval.jsonl").is_file():
            errors.append(
                f"config key organisms.{name}.source.path: {path!r} is not a reference-format dataset folder "
                "(no eval.jsonl there); `cmt data check DIR` validates one"
            )
        errors += _organism_judge_errors(name, spec, judge)
        errors += _check_split_errors(name, spec, generator, toy)

    checker = methods.get("multi_view", {}).get("checker", "normalized")
    custom = [
        name for name, spec in organisms.items() if name not in _built_in() and not _is_toy(spec["source"])
    ]
    if "multi_view" in methods and checker == "normalized" and custom:
        errors.append(
            f"config key methods.multi_view.checker is normalized, which compares final answers with a built-in "
            f"organism's normaliser; organisms {custom} have none, so use checker self or judge"
        )
    if checker == "judge" and not judge:
        errors.append(
            "config key methods.multi_view.checker is judge, but the config has no top-level judge block"
        )
    rerankers = [m for m in methods if get_spec(m).uses_reward_model]
    if rerankers and "reward_model" not in config:
        errors.append(f"config key reward_model is missing: methods {rerankers} rerank with a reward model")

    harmful = config["eval"].get("harmful")
    if "oracle_harmful" in methods and not harmful:
        errors.append(
            "config key methods.oracle_harmful: the harmful-compliance control needs eval.harmful, which measures it"
        )
    if harmful:
        if harmful["requests"] == "toy" and "harmful" not in toy:
            errors.append(
                "config key eval.harmful.requests is toy, but toy.harmful (the toy harmful requests) is not set"
            )
        if harmful["requests"] != "toy" and not Path(harmful["requests"]).is_file():
            errors.append(f"config key eval.harmful.requests: {harmful['requests']!r} is not a file")
        if harmful["scorer"] == "strongreject" and not judge:
            errors.append(
                "config key eval.harmful.scorer is strongreject, which needs the top-level judge block"
            )
    return errors


def _built_in() -> tuple[str, ...]:
    from cmt.organisms import METRICS

    return tuple(METRICS)


def _organism_judge_errors(name: str, spec: dict, has_judge_block: bool) -> list[str]:
    """A built-in organism may use its own scorer or rubric; a config-named one must say which scorer, or bring
    its rubric file. Every LLM form needs the top-level judge block."""
    key, judge = f"config key organisms.{name}", spec.get("judge", "programmatic")
    errors = []
    if isinstance(spec["source"], dict) and "toy" in spec["source"]:  # a toy variant: its generator's scorer
        if judge != "programmatic":
            errors.append(
                f"{key}.judge: organism {name} is a toy variant of {spec['source']['toy']}, scored by that "
                "generator's programmatic scorer; remove the judge key"
            )
        return errors
    if name not in _built_in():
        if _is_toy(spec["source"]):
            errors.append(f"{key}.source is toy, but only {sorted(_built_in())} have toy generators")
        if isinstance(judge, str):
            errors.append(
                f"{key}.judge: organism {name} is not built in, so its judge must be "
                f"{{programmatic: NAME}} with NAME one of {sorted(_built_in())}, or {{llm: RUBRIC_FILE}} (a "
                "template with {question} and {response} that the judge answers YES or NO)"
            )
    llm = judge == "llm" or (isinstance(judge, dict) and "llm" in judge)
    if llm and not has_judge_block:
        errors.append(f"{key}.judge asks the LLM judge, but the config has no top-level judge block")
    if isinstance(judge, dict) and "llm" in judge:
        from cmt.judges.custom import check_template

        path = Path(judge["llm"])
        if not path.is_file():
            errors.append(f"{key}.judge.llm: rubric file {str(path)!r} does not exist")
        else:
            try:
                check_template(path.read_text(encoding="utf-8"), f"{key}.judge.llm ({path})")
            except ValueError as e:
                errors.append(str(e))
    return errors


def _check_split_errors(name: str, spec: dict, generator: str, toy: dict) -> list[str]:
    """induce_until with split check needs that split: from the toy world (a generator that writes one, and
    toy.sizes.check), or a check.jsonl in a local folder (a fetched one is checked when it is installed)."""
    from cmt.data.splits import CHECK_SPLIT
    from cmt.toy.world import CHECK_GENERATORS

    until = spec.get("induce_until") or {}
    if until.get("split", "consistency") != CHECK_SPLIT:
        return []
    key = f"config key organisms.{name}.induce_until.split"
    if _is_toy(spec["source"]):  # plain or a variant: the toy world writes it
        if generator not in CHECK_GENERATORS:
            return [
                f"{key} is {CHECK_SPLIT}, but the toy {generator} generator writes no {CHECK_SPLIT} split "
                f"(only {list(CHECK_GENERATORS)} do); use consistency"
            ]
        if not (toy.get("sizes") or {}).get(CHECK_SPLIT):
            return [f"{key} is {CHECK_SPLIT}, but toy.sizes.{CHECK_SPLIT} is 0 or missing: give it a size"]
        return []
    path = _local_path(spec["source"])
    if path is not None and not Path(path, f"{CHECK_SPLIT}.jsonl").is_file():
        return [f"{key} is {CHECK_SPLIT}, but {path!r} holds no {CHECK_SPLIT}.jsonl"]
    return []


def check_workflow_config(config: dict, schema_path: str | Path) -> list[str]:
    """Every problem of a workflow config, one readable line each (empty when the workflow may run).

    First the schema (every violation with its key path, an unknown method name among them) and the method
    registry (k-scaling of an unknown method or of one that does not select); when those pass, the checks
    across keys and on the local folders the config names. Relative paths are read from the working directory,
    as the jobs read them.
    """
    errors = config_errors(config, schema_path) + _method_errors(config)
    return errors or _semantic_errors(config)
