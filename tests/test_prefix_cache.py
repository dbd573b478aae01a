"""PrefixCache: greedy generation from a reused prefix cache equals generation without it.

Real tiny models: the two-layer Llama of tests/tiny_lm.py, and a three-layer Gemma-3 with a
sliding window of 8 tokens on two of its layers (built here with random weights), so prefixes
shorter and longer than the window both go through transformers' sliding-window cache. Adapters
are peft LoRA adapters with random non-zero B, so each one really changes the logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ragtune.agents.prefix_cache import PrefixCache, fixed_prefix_length  # noqa: E402
from tests.tiny_lm import build_tiny_lm, build_tiny_tokenizer  # noqa: E402

WINDOW = 8
PREFIX = ("Uppsala University was founded in 1477. The University of Oslo was founded in 1811.\n"
          "Question: Which river flows through London?\nAnswer: The Thames\n\n")
QUESTIONS = ["Question: In which city was Ada Lovelace born?\nAnswer:",
             "Question: Which river flows through #1?\nAnswer:",
             "Question: Which university was founded first?\nAnswer:"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer(["<pad>", "<bos>", "<eos>", "<unk>"])[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoModelForCausalLM

    folder = build_tiny_lm(Path(tmp_path_factory.mktemp("tiny-lm")))
    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def gemma(tokenizer: Any) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # the default 0.02 init gives near-uniform logits; make context matter
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
    return model


@pytest.fixture(params=["llama", "gemma"])
def model(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def encode(tokenizer: Any, text: str) -> Any:
    return tokenizer(text, return_tensors="pt")


def generate(model: Any, inputs: Any, **extra: Any) -> tuple[list[int], Any, int]:
    """Greedy-generate; return the new tokens, the stacked per-step scores and the prefill width."""
    widths: list[int] = []
    hook = model.get_input_embeddings().register_forward_pre_hook(
        lambda _module, args: widths.append(int(args[0].shape[1])))
    try:
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=10, min_new_tokens=10,
                                    do_sample=False, output_scores=True,
                                    return_dict_in_generate=True, pad_token_id=0, **extra)
    finally:
        hook.remove()
    new = output.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return new, torch.stack(output.scores), widths[0]


def with_cache(cache: PrefixCache, model: Any, inputs: Any, prefix_length: int | None,
               key: Any = None) -> tuple[list[int], Any, int]:
    with torch.inference_mode():
        extra = cache.generate_kwargs(model, inputs["input_ids"], prefix_length, key)
    assert extra, "expected a prefix cache"
    return generate(model, inputs, **extra)


def test_cached_prefix_gives_the_same_tokens_and_prefills_only_the_rest(
        model: Any, tokenizer: Any) -> None:
    cache = PrefixCache(min_tokens=4)
    prefix_length = fixed_prefix_length(tokenizer, PREFIX + QUESTIONS[0], PREFIX)
    assert prefix_length > 3 * WINDOW
    for _ in range(2):  # the second round reuses the entry after it served three calls
        for question in QUESTIONS:
            inputs = encode(tokenizer, PREFIX + question)
            length = int(inputs["input_ids"].shape[1])
            expected_tokens, expected_scores, width = generate(model, inputs)
            assert width == length
            tokens, scores, width = with_cache(cache, model, inputs, prefix_length)
            assert tokens == expected_tokens
            torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)
            assert width == length - prefix_length
    assert (cache.misses, cache.hits, len(cache)) == (1, 5, 1)


@pytest.mark.parametrize("prefix_length", [WINDOW - 3, WINDOW - 1, WINDOW, WINDOW + 1])
def test_prefixes_around_the_sliding_window_give_the_same_tokens(
        gemma: Any, tokenizer: Any, prefix_length: int) -> None:
    cache = PrefixCache(min_tokens=2)
    inputs = encode(tokenizer, PREFIX + QUESTIONS[1])
    expected_tokens, expected_scores, _ = generate(gemma, inputs)
    for _ in range(2):
        tokens, scores, width = with_cache(cache, gemma, inputs, prefix_length)
        assert tokens == expected_tokens
        torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)
        assert width == int(inputs["input_ids"].shape[1]) - prefix_length


def test_a_wrong_prefix_cache_would_be_caught(model: Any, tokenizer: Any) -> None:
    """The comparison above can fail: another text's states of the same length change the scores."""
    inputs = encode(tokenizer, PREFIX + QUESTIONS[0])
    other = encode(tokenizer, PREFIX.upper() + QUESTIONS[0])
    prefix_length = 3 * WINDOW
    _, expected_scores, _ = generate(model, inputs)
    with torch.inference_mode():
        wrong = PrefixCache().generate_kwargs(model, other["input_ids"], prefix_length, None)
    _, scores, _ = generate(model, inputs, **wrong)
    assert not torch.allclose(scores, expected_scores, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def adapted(llama: Any) -> Any:
    import copy

    from peft import LoraConfig, get_peft_model

    def lora() -> LoraConfig:
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          init_lora_weights=False)

    torch.manual_seed(2)
    model = get_peft_model(copy.deepcopy(llama), lora(), adapter_name="first")
    model.add_adapter("second", lora())
    return model.eval()


@pytest.fixture
def adapter(adapted: Any) -> Iterator[Any]:
    def activate(name: str | None) -> Any:
        return adapted.disable_adapter() if name is None else _set(adapted, name)

    yield activate
    adapted.set_adapter("first")


def _set(model: Any, name: str) -> Any:
    import contextlib

    model.set_adapter(name)
    return contextlib.nullcontext()


def test_each_adapter_gets_its_own_prefix_cache(adapted: Any, adapter: Any, tokenizer: Any) -> None:
    cache = PrefixCache(min_tokens=4)
    inputs = encode(tokenizer, PREFIX + QUESTIONS[2])
    prefix_length = fixed_prefix_length(tokenizer, PREFIX + QUESTIONS[2], PREFIX)
    expected: dict[str | None, Any] = {}
    for name in ("first", "second", None, "first", "second", None):
        with adapter(name):
            tokens, scores, _ = generate(adapted, inputs)
            if name in expected:
                assert tokens == expected[name][0]
            expected[name] = (tokens, scores)
            cached_tokens, cached_scores, _ = with_cache(cache, adapted, inputs, prefix_length,
                                                         key=name)
        assert cached_tokens == tokens
        torch.testing.assert_close(cached_scores, scores, atol=1e-4, rtol=1e-4)
    assert (cache.misses, cache.hits, len(cache)) == (3, 3, 3)
    # The adapters really differ, so a cache served under the wrong key would have shown above.
    assert not torch.allclose(expected["first"][1], expected["second"][1], atol=1e-3)
    assert not torch.allclose(expected["first"][1], expected[None][1], atol=1e-3)
    with adapter("second"), torch.inference_mode():
        mixed = PrefixCache().generate_kwargs(adapted, inputs["input_ids"], prefix_length, "x")
    with adapter("first"):
        _, mixed_scores, _ = generate(adapted, inputs, **mixed)
    assert not torch.allclose(mixed_scores, expected["first"][1], atol=1e-4, rtol=1e-4)


def test_least_recently_used_prefix_is_dropped(llama: Any, tokenizer: Any) -> None:
    cache = PrefixCache(max_entries=2, min_tokens=4)
    prompts = [encode(tokenizer, text)["input_ids"] for text in QUESTIONS]

    def use(index: int) -> None:
        with torch.inference_mode():
            assert cache.past_for(llama, prompts[index], 6, None) is not None

    use(0)
    use(1)
    use(0)  # hit: 0 becomes the most recently used, so 1 is the one to go
    use(2)
    assert (cache.misses, cache.hits, len(cache)) == (3, 1, 2)
    use(0)
    assert (cache.misses, cache.hits) == (3, 2)
    use(1)
    assert (cache.misses, cache.hits, len(cache)) == (4, 2, 2)
    cache.clear()
    assert len(cache) == 0
    use(0)
    assert cache.misses == 5


def test_too_short_prefixes_and_batches_get_none(llama: Any, tokenizer: Any) -> None:
    cache = PrefixCache(min_tokens=8)
    ids = encode(tokenizer, PREFIX + QUESTIONS[0])["input_ids"]
    with torch.inference_mode():
        assert cache.past_for(llama, ids, 7, None) is None  # shorter than min_tokens
        assert cache.past_for(llama, torch.cat([ids, ids]), 20, None) is None  # a batch
        # The last token is always left to prefill: 8 tokens leave 7 to cache, too few.
        assert cache.past_for(llama, ids[:, :8], 8, None) is None
        assert cache.past_for(llama, ids[:, :9], 9, None).get_seq_length() == 8
    assert (cache.misses, cache.hits, len(cache)) == (1, 0, 1)


def test_a_prefix_covering_the_whole_prompt_leaves_its_last_token(llama: Any,
                                                                  tokenizer: Any) -> None:
    cache = PrefixCache(min_tokens=4)
    inputs = encode(tokenizer, PREFIX)
    length = int(inputs["input_ids"].shape[1])
    expected_tokens, _, _ = generate(llama, inputs)
    tokens, _, width = with_cache(cache, llama, inputs, length)
    assert (tokens, width) == (expected_tokens, 1)
    with torch.inference_mode():
        assert cache.past_for(llama, inputs["input_ids"][:, :4], 4, None) is None  # 3 usable


def test_a_model_that_brings_its_own_cache_gets_none(llama: Any, tokenizer: Any) -> None:
    import copy

    static = copy.deepcopy(llama)
    static.generation_config.cache_implementation = "static"
    ids = encode(tokenizer, PREFIX)["input_ids"]
    cache = PrefixCache(min_tokens=4)
    with torch.inference_mode():
        assert cache.past_for(static, ids, 20, None) is None
        assert cache.generate_kwargs(static, ids, 20, None) == {}
    assert cache.misses == 0


def test_automatic_mode_caches_what_prompts_share(gemma: Any, tokenizer: Any) -> None:
    cache = PrefixCache(min_tokens=4)
    first, second, third = (encode(tokenizer, PREFIX + q) for q in QUESTIONS)
    shared = fixed_prefix_length(tokenizer, PREFIX + QUESTIONS[0], PREFIX + QUESTIONS[1])
    with torch.inference_mode():
        assert cache.past_for(gemma, first["input_ids"], None, "a") is None  # nothing seen yet
        assert cache.past_for(gemma, second["input_ids"], None, "b") is None  # other key
        assert cache.past_for(gemma, second["input_ids"], None, "a").get_seq_length() == shared
    assert (cache.misses, cache.hits) == (1, 0)
    expected_tokens, expected_scores, _ = generate(gemma, third)
    tokens, scores, width = with_cache(cache, gemma, third, None, key="a")
    assert (cache.misses, cache.hits) == (1, 1)
    assert tokens == expected_tokens
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)
    assert width == int(third["input_ids"].shape[1]) - shared


def test_fixed_prefix_length_backs_off_where_tokens_merge_across_the_boundary(
        tokenizer: Any) -> None:
    prefix = "Question: Which river flows through Lon"
    prompt = "Question: Which river flows through London?"
    prefix_ids = tokenizer(prefix)["input_ids"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    length = fixed_prefix_length(tokenizer, prompt, prefix)
    # "Lon" is two tokens alone but part of one "London" token in the prompt.
    assert prompt_ids[length] != prefix_ids[length]
    assert 0 < length < len(prefix_ids)
    assert prompt_ids[:length] == prefix_ids[:length]
    assert prefix.startswith(tokenizer.decode(prompt_ids[:length], skip_special_tokens=True))
    clean = "Question: Which river\n"
    assert fixed_prefix_length(tokenizer, clean + "Answer:", clean) == len(
        tokenizer(clean)["input_ids"])
    assert fixed_prefix_length(tokenizer, "Answer:", "Uppsala") == 1  # only <bos> is shared


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        PrefixCache(max_entries=0)
