"""A tiny, random, real causal LM for LoRA code paths: built in seconds, offline.

The tokenizer is a byte-level BPE trained on a few sentences (so no download is needed); the model
is a two-layer Llama with a 32-wide hidden state. It learns nothing useful; it exercises the exact
peft / Trainer / generation code that gemma-3-270m goes through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "Question: Which river flows through London?\nAnswer: The Thames",
    "[1] Ada Lovelace: Ada Lovelace was an English mathematician born in London in 1815.",
    "Sub-questions:\n1. In which city was Ada Lovelace born?\n2. Which river flows through #1?",
    "Uppsala University was founded in 1477. The University of Oslo was founded in 1811.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?#[]()'\"-",
]


def build_tiny_tokenizer(specials: list[str]) -> tuple[Any, Any]:
    """Train the byte-level BPE on `CORPUS`; return it and its `PreTrainedTokenizerFast`.

    `specials` are the pad, bos, eos and unk tokens, in the order their ids should take.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.token_to_id("<bos>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    return tokenizer, fast


def build_tiny_lm(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Llama model and its tokenizer to `folder`; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, fast = build_tiny_tokenizer(["<pad>", "<bos>", "<eos>", "<unk>"])
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, pad_token_id=fast.pad_token_id,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
