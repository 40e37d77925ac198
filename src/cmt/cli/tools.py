"""The user's commands: check a config or a dataset, run a program in the sandbox, verify results, fetch data and
models, prune a judge cache.

A person runs these by hand; fetch-dataset and download-model are also what the download rules run.
"""

from __future__ import annotations

import json
import logging

from cmt.cli.common import add_job_options, fail, json_object, positive_seconds

log = logging.getLogger("cmt")


def _repository_schema():
    from pathlib import Path

    import cmt

    # src/cmt/__init__.py -> the checkout's workflow/schemas (an installed wheel has no workflow folder)
    return Path(cmt.__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def cmd_config_check(args) -> None:
    import os

    from cmt.config import ConfigError, check_workflow_config, load_config_files

    schema = args.schema or _repository_schema()
    if not os.path.isfile(schema):
        raise fail("config check", f"no schema at {schema}; give the checkout's with --schema")
    try:
        config = load_config_files(args.files)
    except ConfigError as err:
        config, problems = None, str(err).splitlines()
    if config is not None:
        cwd = os.getcwd()
        try:
            os.chdir(args.directory)  # relative folders are read from here, as the jobs read them
            problems = check_workflow_config(config, schema)
        finally:
            os.chdir(cwd)
    if problems:
        raise SystemExit("cmt config check: invalid config:\n  " + "\n  ".join(problems))
    print(f"{' + '.join(args.files)}: valid ({len(config.get('organisms', {}))} organisms, "
          f"{len(config.get('methods', {}))} methods, seeds {config.get('seeds')})", flush=True)  # fmt: skip


def cmd_data_check(args) -> None:
    from cmt.data.check import check_dataset

    report = check_dataset(args.dir, max_errors=args.max_errors)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(), flush=True)
    if not report.ok:
        raise SystemExit(1)


def cmd_sandbox(args) -> None:
    from cmt.runtime.sandbox import run_file

    try:
        verdict = run_file(args.file, timeout_s=args.timeout)
    except FileNotFoundError:
        raise fail("sandbox", f"no such file: {args.file}") from None
    except IsADirectoryError:
        raise fail("sandbox", f"{args.file} is a directory; give a Python file") from None
    except OSError as err:
        raise fail("sandbox", f"cannot read {args.file}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise fail("sandbox", f"{args.file} is not text (byte {err.start}); give a Python file") from None
    print(verdict.to_json(), flush=True)
    # A failing program is still a verdict; only the sandbox failing itself is an error here.
    if verdict.status == "sandbox_error":
        raise fail("sandbox", f"sandbox error: {verdict.message}")


def cmd_verify(args) -> None:
    from cmt.runtime.verify import fix_modes, verify_tree

    report = fix_modes(args.dir) if args.fix_modes else verify_tree(args.dir, root=args.root)
    print(report.format(), flush=True)
    if not report.ok:
        raise SystemExit(1)


def cmd_fetch_dataset(args) -> None:
    from cmt.data.fetch import fetch_source

    counts = fetch_source(args.source, args.out)
    log.info("%s: %s", args.out, counts)


def cmd_download_model(args) -> None:
    from cmt.models.download import download_model

    download_model(args.repo, args.revision, args.out, chat_template=args.chat_template)


def cmd_judge_cache_prune(args) -> None:
    from cmt.judges.cache import prune

    try:
        report = prune(args.dir, dry_run=args.dry_run)
    except FileNotFoundError as err:
        raise fail("judge cache prune", str(err)) from None
    print(report.format(), flush=True)


def add_commands(sub) -> list[tuple[str, str]]:
    """Add the user's commands to `sub`; return (name, help) of each, for the overview in `cmt --help`."""
    listed = []

    def command(name: str, text: str, under=sub):
        """A command (`under`: a group's subparsers, for `data check`), listed by its full name."""
        listed.append((name, text))
        p = under.add_parser(name.split()[-1], help=text, description=text)
        add_job_options(p)
        return p

    def group(name: str, text: str, description: str, under=sub):
        """A command that only holds subcommands (`judge`, `judge cache`); returns their subparsers."""
        p = under.add_parser(name, help=text, description=description)
        return p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    text = (
        "check a workflow config before a run: YAML errors and keys given twice with their lines, then every "
        "check the workflow makes; FILE... merge as `snakemake --configfile FILE...` merges them"
    )
    check = command("config check", text, group("config", "config tools: config check", "config tools"))
    check.add_argument("files", metavar="FILE", nargs="+")
    check.add_argument("--schema", default=None,
                       help="the config schema (default: this checkout's workflow/schemas/config.schema.yaml)")  # fmt: skip
    check.add_argument("--directory", default=".",
                       help="where the workflow will run (snakemake --directory): relative folders are read here")  # fmt: skip
    check.set_defaults(func=cmd_config_check)

    text = "validate an organism folder in the reference format"
    check = command("data check", text, group("data", "dataset tools: data check", "dataset tools"))
    check.add_argument("dir", metavar="DIR")
    check.add_argument("--max-errors", type=int, default=50, help="list at most this many errors")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=cmd_data_check)

    p = command("sandbox", "run a Python file in the sandbox; print one JSON verdict")
    p.add_argument("file", metavar="FILE.py")
    p.add_argument("--timeout", type=positive_seconds, default=10.0,
                   help="wall-clock (and CPU) seconds: a positive number, at most a day (default 10)")  # fmt: skip
    p.set_defaults(func=cmd_sandbox)

    p = command(
        "verify",
        "re-hash the inputs and outputs recorded in the manifests under DIR "
        "(--fix-modes: make private result files readable)",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--root", default=None, help="directory relative paths resolve against (default: cwd)")
    p.add_argument("--fix-modes", action="store_true",
                   help="instead of re-hashing: give the files and folders under DIR the read permissions "
                        "that the umask allows (results written by older versions are private, mode 0600)")  # fmt: skip
    p.set_defaults(func=cmd_verify)

    p = command("fetch-dataset", "download a dataset (archive or loose files), verify sha256s, validate it")
    p.add_argument("--source", type=json_object, required=True,
                   help='the organism\'s source block as JSON: {"url", "sha256"} or {"base_url", "files"}')  # fmt: skip
    p.add_argument("--out", required=True, help="the dataset folder to create")
    p.set_defaults(func=cmd_fetch_dataset)

    p = command("download-model", "download a Hugging Face model snapshot (login node; token from HF_TOKEN)")
    p.add_argument("--repo", required=True, help="Hub repository id, e.g. meta-llama/Llama-3.1-8B")
    p.add_argument("--revision", required=True, help="commit sha, tag or branch")
    p.add_argument("--out", required=True, help="model folder to create, e.g. resources/models/<name>")
    p.add_argument("--chat-template", choices=["own", "plain"], default="own",
                   help="own: the checkpoint's template; plain: install cmt's plain-text template")  # fmt: skip
    p.set_defaults(func=cmd_download_model)

    judge = group("judge", "judge tools: judge cache prune", "LLM judge tools")
    cache = group("cache", "the judge's reply cache", "the judge's reply cache", under=judge)
    text = (
        "remove the entries of a judge cache folder (judge.cache_dir) that hold no answer: empty, null or "
        "unparseable replies, which earlier versions cached; print how many were removed"
    )
    prune = command("judge cache prune", text, cache)
    prune.add_argument("dir", metavar="DIR")
    prune.add_argument("--dry-run", action="store_true", help="count the bad entries, remove nothing")
    prune.set_defaults(func=cmd_judge_cache_prune)
    return listed
