# Base models given as `source: {hub: ORG/NAME, revision: REV}` (and the reward model, where its source has that
# form): downloaded once into resources/models/<name>/, from which every job loads them offline.
from cmt.models.download import hub_downloads

HUB_DOWNLOADS = hub_downloads(config)


# Downloads need the network and the user's HF_TOKEN, which only the login node has.
localrules:
    download_model,


rule download_model:
    output:
        "resources/models/{name}/config.json",
    log:
        "logs/download_model/{name}.log",
    wildcard_constraints:
        # Exactly the Hub-sourced names (any_of escapes their dots).
        name=any_of(HUB_DOWNLOADS),
    conda:
        "../envs/train.yml"
    params:
        repo=lambda wildcards: HUB_DOWNLOADS[wildcards.name]["hub"],
        revision=lambda wildcards: HUB_DOWNLOADS[wildcards.name]["revision"],
        chat_template=lambda wildcards: HUB_DOWNLOADS[wildcards.name]["chat_template"],
    # HF_HUB_OFFLINE=0: every other job runs offline; this one must reach the Hub. The token is read from the
    # environment by cmt and never appears on the command line or in the log.
    shell:
        "HF_HUB_OFFLINE=0 cmt download-model --repo {params.repo:q} --revision {params.revision:q}"
        ' --out "$(dirname {output:q})" --chat-template {params.chat_template:q}'
        " --log {log:q} --job 'download_model {wildcards}'"
