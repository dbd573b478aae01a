"""A tiny, random, real Gemma 3 model in both formats: a transformers directory and its GGUF file.

The GGUF is written tensor by tensor with gguf-py the way llama.cpp's `convert_hf_to_gguf.py`
writes a Gemma 3 model (norm weights stored as `1 + w`, tied embeddings, a byte-level BPE
vocabulary), so llama.cpp runs the same weights transformers does. It is built in seconds, offline,
and exercises the llama.cpp serving path (`ragtune.agents.llama_cpp_model`) and the LoRA conversion
(`ragtune.agents.lora_gguf`) on the exact tensor names gemma-3-270m uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_lm import build_tiny_tokenizer

TINY_GEMMA_ID = "tests/tiny-gemma3"


def build_tiny_gemma(folder: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny random Gemma 3 model to `folder` and its GGUF beside it; return both paths."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer, fast = build_tiny_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"])
    config = Gemma3TextConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=1024, sliding_window=512, pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        layer_types=["sliding_attention", "sliding_attention"], tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # random norms, so a wrong `1 + w` convention would show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(-0.5, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    gguf_path = folder.with_suffix(".gguf")
    _write_gguf(model, fast, json.loads(tokenizer.to_str()), gguf_path)
    return folder, gguf_path


def _write_gguf(model: object, fast: object, tokenizer_json: dict, path: Path) -> None:
    import gguf
    import numpy as np

    config = model.config  # type: ignore[attr-defined]
    arch = gguf.MODEL_ARCH.GEMMA3
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("tiny gemma3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(config.sliding_window)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer_json["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special_ids = {fast.convert_tokens_to_ids(t)  # type: ignore[attr-defined]
                   for t in ("<pad>", "<eos>", "<bos>", "<unk>")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_unk_token_id(fast.convert_tokens_to_ids("<unk>"))  # type: ignore[attr-defined]
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    for hf_name, tensor in model.state_dict().items():  # type: ignore[attr-defined]
        if hf_name == "lm_head.weight":
            continue  # tied to the embeddings
        data = tensor.detach().float().numpy().astype(np.float32)
        if hf_name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp by w
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
