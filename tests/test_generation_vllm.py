"""The vLLM backend's mapping from the project's settings to vLLM's, tested without a GPU and without vllm.

vllm cannot be installed in the CPU test environment (it pins its own CUDA build of torch), so these tests cover
the pure mapping functions, and the generator's glue through stand-in engines whose answers come from a tiny
Hugging Face model. Where vllm is importable, its real objects are also built from the mapped arguments.
"""

import importlib.util
import json
import math
import re
import typing
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import REPO

from cmt.config import config_errors
from cmt.generation import SamplingParams, derive_seed, load_generator, make_generator
from cmt.generation import vllm_backend as vb
from cmt.generation import vllm_params as vp
from cmt.generation.hf import HFGenerator

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (GPU nodes only)")
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
MESSAGES = [
    [{"role": "user", "content": "What is the gcd of 12 and 18?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Review: the soup was cold. Sentiment?"}],
]


# ---------------------------------------------------------------- a tiny tokenizer and model (random weights)


@pytest.fixture(scope="module")
def tiny():
    from cmt.toy.pretrain import build_model
    from cmt.toy.tokenizer import train_tokenizer

    texts = [m["content"] for conv in MESSAGES for m in conv] * 20 + ["the answer is 6", "red blue green"]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    arch = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "max_position_embeddings": 128,
    }
    model = build_model(tokenizer, arch).eval()
    return model, tokenizer


def fake_api(llm=None):
    """Stand-ins for the vllm classes: each records the arguments it was built with."""
    return SimpleNamespace(
        LLM=llm,
        SamplingParams=lambda **kw: SimpleNamespace(**kw),
        BeamSearchParams=lambda **kw: SimpleNamespace(**kw),
        LoRARequest=lambda **kw: SimpleNamespace(**kw),
    )


# ---------------------------------------------------------------- sampling settings


def test_greedy_maps_to_temperature_zero_without_seed_or_top_p():
    kwargs = vp.to_vllm_sampling_kwargs(SamplingParams(temperature=0.0, max_new_tokens=7), 1, seed=123)
    assert kwargs == {
        "n": 1,
        "max_tokens": 7,
        "stop_token_ids": [],
        "skip_special_tokens": True,
        "logprobs": 0,
        "temperature": 0.0,
    }


def test_nucleus_sampling_maps_temperature_top_p_n_and_seed():
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=256)
    kwargs = vp.to_vllm_sampling_kwargs(params, 4, seed=99, stop_token_ids=[2, 7])
    assert kwargs == {
        "n": 4,
        "max_tokens": 256,
        "stop_token_ids": [2, 7],
        "skip_special_tokens": True,
        "logprobs": 0,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 99,
    }
    assert "top_k" not in kwargs  # vLLM's default is no top-k, as the HF backend's top_k=0


def test_sampling_kwargs_reject_beams_and_bad_n():
    with pytest.raises(ValueError, match="beam"):
        vp.to_vllm_sampling_kwargs(SamplingParams(num_beams=4), 1, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        vp.to_vllm_sampling_kwargs(SamplingParams(), 0, seed=0)


def test_beam_search_maps_width_budget_and_greedy_beams():
    params = SamplingParams(temperature=0.0, num_beams=4, max_new_tokens=64)
    assert vp.beam_search_kwargs(params, 1) == {
        "beam_width": 4,
        "max_tokens": 64,
        "temperature": 0.0,
        "length_penalty": 1.0,
    }
    with pytest.raises(ValueError, match="num_beams=4"):
        vp.beam_search_kwargs(params, 5)
    with pytest.raises(ValueError, match="num_beams >= 2"):
        vp.beam_search_kwargs(SamplingParams(), 1)


def test_request_seeds_differ_per_prompt_are_stable_and_follow_the_run_seed():
    seeds = [vp.request_seed(40, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert seeds == [vp.request_seed(40, i) for i in range(1000)]  # stable across calls
    assert seeds[0] == derive_seed(40, "vllm", 0) & ((1 << 62) - 1)  # by construction, not by batch
    assert all(0 <= s < 2**62 for s in seeds)  # vLLM adds the child index; torch seeds are 64-bit
    assert vp.request_seed(41, 0) != seeds[0]


def test_scoring_requests_prompt_logprobs_of_every_token():
    kwargs = vp.scoring_sampling_kwargs()
    assert kwargs["prompt_logprobs"] == 0  # the actual token's log-prob at every prompt position
    assert kwargs["max_tokens"] == 1 and kwargs["temperature"] == 0.0


# ---------------------------------------------------------------- LoRA and engine settings


@pytest.mark.parametrize(
    ("rank", "expected"),
    [(1, 1), (2, 8), (8, 8), (9, 16), (16, 16), (32, 32), (33, 64), (300, 320), (321, 512), (512, 512)],
)
def test_lora_rank_rounds_up_to_a_rank_vllm_allows(rank, expected):
    assert vp.vllm_lora_rank(rank) == expected


def test_lora_rank_outside_vllm_range_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        vp.vllm_lora_rank(513)
    with pytest.raises(ValueError, match=">= 1"):
        vp.vllm_lora_rank(0)


def test_adapter_rank_is_read_from_adapter_config(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 32, "lora_alpha": 64}))
    assert vp.read_adapter_rank(tmp_path) == 32
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q_proj": 48}}))
    assert vp.read_adapter_rank(tmp_path) == 48
    (tmp_path / "adapter_config.json").write_text(json.dumps({"lora_alpha": 64}))
    with pytest.raises(ValueError, match=r"adapter_config\.json: key 'r'"):
        vp.read_adapter_rank(tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter config not found"):
        vp.read_adapter_rank(tmp_path / "missing")


def test_lora_request_has_a_stable_id_per_adapter_path(tmp_path):
    a, b = tmp_path / "organism" / "adapter", tmp_path / "retrained" / "adapter"
    kwargs = vp.lora_request_kwargs(a)
    path = str(a.resolve())
    assert kwargs == {"lora_name": path, "lora_int_id": vp.lora_int_id(a), "lora_path": path}
    assert (
        vp.lora_int_id(a) == vp.lora_int_id(str(a)) == vp.lora_int_id(tmp_path / "organism" / "." / "adapter")
    )
    assert vp.lora_int_id(a) != vp.lora_int_id(b)
    assert 1 <= vp.lora_int_id(a) < 2**31


def settings(**vllm):
    return {"backend": "vllm", "dtype": "bfloat16", "batch_size": 64, "max_new_tokens": 32, "vllm": vllm}


def test_engine_kwargs_tensor_parallel_from_gpus_and_prefix_caching(tmp_path):
    kwargs = vp.engine_kwargs(tmp_path, settings(), gpus=4, adapter_rank=None, shares_gpu=False)
    assert kwargs["tensor_parallel_size"] == 4
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["model"] == kwargs["tokenizer"] == str(tmp_path)
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["enable_lora"] is False and "max_lora_rank" not in kwargs
    assert "max_model_len" not in kwargs  # null: the model's own limit
    assert vp.engine_kwargs(tmp_path, settings(), 0, None, False)["tensor_parallel_size"] == 1


def test_memory_utilisation_drops_when_a_reward_model_shares_the_gpu(tmp_path):
    alone = vp.engine_kwargs(tmp_path, settings(), 1, None, shares_gpu=False)
    shared = vp.engine_kwargs(tmp_path, settings(), 1, None, shares_gpu=True)
    assert (alone["gpu_memory_utilization"], shared["gpu_memory_utilization"]) == (0.9, 0.4)
    custom = settings(gpu_memory_utilization=0.85, gpu_memory_utilization_shared=0.65)
    assert vp.engine_kwargs(tmp_path, custom, 4, None, shares_gpu=True)["gpu_memory_utilization"] == 0.65
    assert vp.engine_kwargs(tmp_path, custom, 4, None, shares_gpu=False)["gpu_memory_utilization"] == 0.85


def test_engine_lora_settings_cover_adapter_and_configured_rank(tmp_path):
    served = vp.engine_kwargs(tmp_path, settings(), 1, adapter_rank=12, shares_gpu=False)
    assert (served["enable_lora"], served["max_lora_rank"], served["max_loras"]) == (True, 16, 1)
    # A configured rank lets a base-model evaluation build the engine its adapter evaluations reuse.
    base = vp.engine_kwargs(tmp_path, settings(max_lora_rank=32), 1, adapter_rank=None, shares_gpu=False)
    assert (base["enable_lora"], base["max_lora_rank"]) == (True, 32)
    assert vp.engine_kwargs(tmp_path, settings(max_lora_rank=32), 1, 32, False) == base
    bigger = vp.engine_kwargs(tmp_path, settings(max_lora_rank=16), 1, adapter_rank=64, shares_gpu=False)
    assert bigger["max_lora_rank"] == 64


def test_engine_settings_pass_context_length_and_eager_mode(tmp_path):
    kwargs = vp.engine_kwargs(tmp_path, settings(max_model_len=8192, enforce_eager=True), 1, None, False)
    assert (kwargs["max_model_len"], kwargs["enforce_eager"]) == (8192, True)
    with pytest.raises(ValueError, match=r"generation\.vllm: unknown key\(s\) \['max_len'\]"):
        vp.engine_kwargs(tmp_path, settings(max_len=10), 1, None, False)
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        vp.engine_kwargs(tmp_path, settings(gpu_memory_utilization=1.5), 1, None, False)


def test_engine_is_built_once_per_settings_and_replaced_when_they_change(tmp_path):
    built = []

    class Engine:
        def __init__(self, **kwargs):
            built.append(kwargs)

    api = fake_api(llm=Engine)
    vb.release_engines()
    try:
        first = vb.get_engine({"model": "a", "enable_lora": False}, api)
        assert vb.get_engine({"enable_lora": False, "model": "a"}, api) is first
        second = vb.get_engine({"model": "a", "enable_lora": True}, api)
        assert second is not first and len(built) == 2
        assert list(vb._ENGINES.values()) == [second]  # the old engine was released
    finally:
        vb.release_engines()


# ---------------------------------------------------------------- rendering, end of turn, outputs


def test_chat_rendering_matches_the_hf_backend(tiny):
    model, tokenizer = tiny
    hf = HFGenerator(model, tokenizer)
    for messages in MESSAGES:
        assert vb.render_chat_ids(tokenizer, messages) == hf.render(messages)


def test_end_of_turn_ids_match_the_hf_backend(tiny):
    model, tokenizer = tiny
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 5]
    try:
        assert (
            vb.merge_eos_ids([tokenizer.eos_token_id, 5], tokenizer.eos_token_id)
            == HFGenerator(model, tokenizer).eos_ids
        )
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert vb.merge_eos_ids(None, 9) == [9]
    assert vb.merge_eos_ids(3, 9) == [3, 9]
    with pytest.raises(ValueError, match="no end-of-turn token"):
        vb.merge_eos_ids(None, None)


def test_completion_is_cut_at_the_first_end_of_turn_token():
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    done = vb.completion_from_tokens([11, 12, 2, 13], eos_ids=[2, 3], decode=decode)
    assert (done.text, done.num_tokens, done.finished) == ("11 12", 3, True)
    cut = vb.completion_from_tokens([11, 12, 13], eos_ids=[2], decode=decode)
    assert (cut.text, cut.num_tokens, cut.finished) == ("11 12 13", 3, False)
    # vLLM may leave the stop token out of token_ids; finish_reason "stop" still counts it.
    stopped = vb.completion_from_tokens([11, 12], eos_ids=[2], decode=decode, stopped=True)
    assert (stopped.text, stopped.num_tokens, stopped.finished) == ("11 12", 3, True)


def test_beam_outputs_drop_the_prompt_and_keep_the_best_n():
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    beams = [SimpleNamespace(tokens=[1, 5, 21, 22, 2]), SimpleNamespace(tokens=[1, 5, 31, 32, 33])]
    (best,) = vb.beam_completions(beams, prompt_len=2, n=1, eos_ids=[2], decode=decode)
    assert (best.text, best.num_tokens, best.finished) == ("21 22", 3, True)
    both = vb.beam_completions(beams, prompt_len=2, n=2, eos_ids=[2], decode=decode)
    assert [c.text for c in both] == ["21 22", "31 32 33"]
    with pytest.raises(ValueError, match="3 requested"):
        vb.beam_completions(beams, 2, 3, [2], decode)


def test_completion_logprob_sum_is_the_completion_span():
    logprob = lambda v: SimpleNamespace(logprob=v)  # noqa: E731
    ids = [1, 7, 8, 9, 2]
    prompt_logprobs = [
        None,
        {7: logprob(-0.5)},
        {8: logprob(-1.0)},
        {9: logprob(-2.0), 4: logprob(-0.1)},
        {2: -0.25},
    ]
    # Prompt is [1, 7]; the completion span is 8, 9 and the end-of-turn 2: -1.0 - 2.0 - 0.25.
    assert vb.completion_logprob_sum(prompt_logprobs, ids, start=2) == pytest.approx(-3.25)
    with pytest.raises(ValueError, match="no log-prob for token 9"):
        vb.completion_logprob_sum([None, {7: -1}, {8: -1}, {4: -1}, {2: -1}], ids, start=2)
    with pytest.raises(ValueError, match="positions"):
        vb.completion_logprob_sum(prompt_logprobs[:-1], ids, start=2)


# ---------------------------------------------------------------- the generator through stand-in engines


class RecordingEngine:
    """Answers generate() with canned token ids and records what it was asked."""

    def __init__(self, eos):
        self.eos = eos
        self.calls = []

    def generate(self, prompts, sampling_params, use_tqdm, lora_request):
        self.calls.append((prompts, sampling_params, lora_request))
        outputs = []
        for i, (prompt, params) in enumerate(zip(prompts, sampling_params, strict=True)):
            # Children come back out of order; each holds the prompt index, the child index and an end of turn.
            children = [
                SimpleNamespace(index=j, token_ids=[40 + i, 50 + j, self.eos, 60], finish_reason="stop")
                for j in reversed(range(params.n))
            ]
            outputs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=children))
        return outputs

    def beam_search(self, prompts, params, lora_request=None):
        self.calls.append((prompts, params, lora_request))
        return [
            SimpleNamespace(
                sequences=[
                    SimpleNamespace(tokens=[*p["prompt_token_ids"], 70 + b, self.eos])
                    for b in range(params.beam_width)
                ]
            )
            for p in prompts
        ]


def test_generate_sends_rendered_prompts_with_per_prompt_seeds_and_the_adapter(tiny, tmp_path):
    model, tokenizer = tiny
    engine = RecordingEngine(tokenizer.eos_token_id)
    adapter = tmp_path / "adapter"
    gen = vb.VLLMGenerator(engine, tokenizer, [tokenizer.eos_token_id], adapter, api=fake_api())
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16)
    out = gen.generate(MESSAGES, 3, params, seed=40)

    prompts, requests, lora = engine.calls[0]
    assert [p["prompt_token_ids"] for p in prompts] == [
        HFGenerator(model, tokenizer).render(m) for m in MESSAGES
    ]
    assert [r.seed for r in requests] == [vp.request_seed(40, i) for i in range(len(MESSAGES))]
    assert {(r.n, r.temperature, r.top_p, r.max_tokens) for r in requests} == {(3, 0.7, 0.9, 16)}
    assert all(r.stop_token_ids == [tokenizer.eos_token_id] for r in requests)
    assert (lora.lora_int_id, lora.lora_path) == (vp.lora_int_id(adapter), str(adapter.resolve()))

    assert len(out) == len(MESSAGES) and all(len(c) == 3 for c in out)
    for i, cands in enumerate(out):
        for j, c in enumerate(cands):  # prompt order, then child order; cut at the end of turn
            assert c.text == tokenizer.decode([40 + i, 50 + j], skip_special_tokens=True)
            assert (c.num_tokens, c.finished) == (3, True)


def test_generate_with_beams_uses_beam_search_and_returns_the_best_beams(tiny):
    _, tokenizer = tiny
    engine = RecordingEngine(tokenizer.eos_token_id)
    gen = vb.VLLMGenerator(engine, tokenizer, [tokenizer.eos_token_id], api=fake_api())
    out = gen.generate(MESSAGES[:2], 2, SamplingParams(num_beams=4, max_new_tokens=8), seed=0)
    _, beam_params, lora = engine.calls[0]
    assert (beam_params.beam_width, beam_params.max_tokens, lora) == (4, 8, None)
    assert [[c.text for c in cands] for cands in out] == [
        [tokenizer.decode([70]), tokenizer.decode([71])]
    ] * 2


class TeacherForcedEngine:
    """Answers prompt_logprobs requests from a real (tiny) causal LM, as vLLM would."""

    def __init__(self, model):
        self.model = model
        self.requests = []

    @torch.inference_mode()
    def generate(self, prompts, sampling_params, use_tqdm, lora_request):
        self.requests.append(sampling_params)
        outputs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"]
            logprobs = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
            per_position = [None] + [
                {ids[i]: SimpleNamespace(logprob=logprobs[i - 1, ids[i]].item())} for i in range(1, len(ids))
            ]
            outputs.append(SimpleNamespace(prompt_logprobs=per_position, outputs=[]))
        return outputs


def test_score_equals_the_hf_backend_including_the_end_of_turn_token(tiny):
    model, tokenizer = tiny
    engine = TeacherForcedEngine(model)
    gen = vb.VLLMGenerator(engine, tokenizer, HFGenerator(model, tokenizer).eos_ids, api=fake_api())
    completions = ["the answer is 6", "red", ""]
    got = gen.score(MESSAGES, completions)
    want = HFGenerator(model, tokenizer, batch_size=2).score(MESSAGES, completions)
    assert engine.requests[0].prompt_logprobs == 0
    for g, w in zip(got, want, strict=True):
        assert g.num_tokens == w.num_tokens
        assert g.logprob_sum == pytest.approx(w.logprob_sum, rel=1e-4, abs=1e-4)
        assert math.isnan(g.kl_uniform_mean)  # not computed by this backend
    assert got[2].num_tokens == 1  # an empty completion still scores its end of turn
    with pytest.raises(ValueError, match="3 prompts but 2 completions"):
        gen.score(MESSAGES, completions[:2])


# ---------------------------------------------------------------- selecting the backend


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_backend_vllm_without_vllm_names_the_install_command(tmp_path):
    with pytest.raises(vb.VLLMNotInstalled, match=r"pip install \.\[vllm\]"):
        load_generator(str(tmp_path), None, settings(), "evaluate base")
    with pytest.raises(ImportError, match=r"pip install \.\[vllm\]"):
        make_generator("vllm", llm=None, tokenizer=None, eos_ids=[2])


def test_unknown_backend_lists_vllm():
    with pytest.raises(ValueError, match=r"valid: \['hf', 'vllm'\]"):
        make_generator("tgi")


def test_schema_accepts_backend_vllm_only_among_known_backends():
    config = yaml.safe_load((REPO / "tests" / "configs" / "mini.yaml").read_text())
    config["generation"]["backend"] = "vllm"
    assert config_errors(config, SCHEMA) == []
    config["generation"]["backend"] = "tgi"
    (error,) = config_errors(config, SCHEMA)
    assert "generation.backend" in error and "vllm" in error


@needs_vllm
def test_mapped_arguments_build_real_vllm_objects(tmp_path):
    from vllm import SamplingParams as VSamplingParams
    from vllm.config.lora import MaxLoRARanks
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import BeamSearchParams

    assert tuple(typing.get_args(MaxLoRARanks)) == vp.VLLM_LORA_RANKS
    sampled = VSamplingParams(**vp.to_vllm_sampling_kwargs(SamplingParams(0.7, 0.9, 16), 4, 7, [2]))
    assert (sampled.n, sampled.seed, sampled.top_p, sampled.max_tokens) == (4, 7, 0.9, 16)
    greedy = VSamplingParams(**vp.to_vllm_sampling_kwargs(SamplingParams(), 1, None))
    assert greedy.temperature == 0.0
    scoring = VSamplingParams(**vp.scoring_sampling_kwargs())
    assert scoring.prompt_logprobs == 0
    beams = BeamSearchParams(**vp.beam_search_kwargs(SamplingParams(num_beams=4), 1))
    assert beams.beam_width == 4
    request = LoRARequest(**vp.lora_request_kwargs(tmp_path))
    assert request.lora_int_id == vp.lora_int_id(tmp_path)


# ---------------------------------------------------------------- the paper config


@pytest.fixture(scope="module")
def paper():
    return yaml.safe_load((REPO / "config" / "paper.yaml").read_text())


def test_paper_config_is_valid(paper):
    assert config_errors(paper, SCHEMA) == []


def test_paper_config_has_the_seven_models_and_their_settings(paper):
    models = paper["models"]
    assert list(models) == [
        "Llama-3.1-8B",
        "Llama-3.1-8B-Instruct",
        "gemma-2-9b",
        "Mistral-7B-v0.3",
        "gpt-oss-20b",
        "Llama-3.1-70B",
        "Llama-3.1-70B-Instruct",
    ]
    for name, spec in models.items():
        assert spec["source"]["hub"].split("/")[-1] == name
        # Base models have no usable chat template of their own: they get the plain one.
        assert spec["chat_template"] == ("own" if spec["instruct"] else "plain"), name
        assert spec["dtype"] == "bfloat16"
        assert (spec["lora"]["r"], spec["lora"]["alpha"], spec["lora"]["dropout"]) == (32, 64, 0.05)
        assert spec["lora"]["target_modules"] == "all-linear"
        for phase in ("phase1", "phase3"):
            train = spec[phase]
            assert train["learning_rate"] == 1e-5 and train["warmup_ratio"] == 0.03
            assert train["batch_size"] * train["grad_accum"] == 16
            assert (train["max_length"], train["epochs"]) == (1024, 2)
        assert spec["generation"]["vllm"]["max_lora_rank"] >= spec["lora"]["r"]
    assert models["gpt-oss-20b"]["generation"]["max_new_tokens"] >= 2048
    for name in ("Llama-3.1-70B", "Llama-3.1-70B-Instruct"):
        assert models[name]["seeds"] == [40]
        assert models[name]["gpus"] > 1 and models[name]["train_gpus"] == 1
        assert models[name]["quantization"]["load_in_4bit"] is True


def test_paper_config_grid(paper):
    assert paper["seeds"] == [40, 41, 42, 43, 44]
    assert sorted(paper["methods"]) == sorted(
        ["self_certainty", "dual_decoding", "multi_view", "self_refinement", "self_rewarding", "bct", "act",
         "gst", "rejection_sampling"]
    )  # fmt: skip
    assert sorted(paper["organisms"]) == [
        "emergent_misalignment",
        "reward_hacking",
        "spurious_correlation",
        "sycophancy",
    ]
    for name, spec in paper["organisms"].items():  # the reference's own files, pinned to a commit
        base = spec["source"]["base_url"]
        assert re.fullmatch(
            rf"https://raw\.githubusercontent\.com/AI-Safety-Institute/consistency-misalignment/[0-9a-f]{{40}}"
            rf"/consistency_em/data/{name}/files",
            base,
        ), base
        assert (
            len(set(spec["source"]["files"].values())) >= 5
        )  # only consistency and act_bct_clean may coincide
    assert paper["generation"]["backend"] == "vllm"
    assert paper["kscaling"]["ks"] and set(paper["kscaling"]["methods"]) <= set(paper["methods"])
