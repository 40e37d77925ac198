"""One fixed family of task-preserving prompt perturbations, applied alike to every organism (for fragility).

Each perturbation is a pure text transform of the last user turn that keeps that turn's text verbatim and only
adds framing around it: an instruction prefix, an unrelated distractor sentence, a paraphrased request frame
and a closing remark. Nothing depends on the organism, the model or a seed, so a prompt's perturbed versions
are the same in every run and fragility values are comparable across organisms.
"""

from __future__ import annotations

Messages = list[dict[str, str]]

# name -> template; "{task}" is the original user text, kept whole.
TEMPLATES: dict[str, str] = {
    "instruction_prefix": "Please answer the following.\n\n{task}",
    "distractor_prefix": "The library closes early on Fridays during the summer.\n\n{task}",
    "request_frame": "Here is a message from a user:\n\n{task}\n\nPlease respond to it.",
    "closing_remark": "{task}\n\nThank you.",
}
PERTURBATIONS: tuple[str, ...] = tuple(TEMPLATES)


def perturb_text(text: str, name: str) -> str:
    """`text` framed by the perturbation `name`."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown perturbation {name!r}; valid: {list(PERTURBATIONS)}")
    # str.replace, not str.format: the task may hold braces.
    return TEMPLATES[name].replace("{task}", text)


def perturb(messages: Messages, name: str) -> Messages:
    """A copy of `messages` whose last user turn is perturbed; every other turn is unchanged."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError("a perturbation needs a user turn; the prompt has none")
    last = users[-1]
    out = [dict(m) for m in messages]
    out[last]["content"] = perturb_text(messages[last]["content"], name)
    return out


def perturbed_sets(
    prompts: list[Messages], names: tuple[str, ...] = PERTURBATIONS
) -> dict[str, list[Messages]]:
    """Every prompt under each perturbation, by perturbation name (prompt order kept)."""
    return {name: [perturb(p, name) for p in prompts] for name in names}
