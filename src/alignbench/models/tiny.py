"""``model=tiny``: a random-initialised Llama and a word-level tokenizer, built in memory.

No download is involved: the tokenizer's vocabulary is the data's own vocabulary (the safety world
lists every token it can produce), plus the prompt template's words and four special tokens. Texts are
split on whitespace and decoded by joining tokens with single spaces, so every world text survives
``decode(encode(text)) == text`` exactly and the judge reads what the model wrote. ``save_pretrained``
writes it as a ``tokenizer.json`` that ``AutoTokenizer.from_pretrained`` loads back (the job's export).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignbench.config import TinyArchConfig

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_word_tokenizer(words: Iterable[str], template: str = "") -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``words`` and the template's words (``{prompt}`` removed)."""
    vocab: dict[str, int] = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    template_words = template.replace("{prompt}", " ").split()
    for word in [*template_words, *sorted(set(words))]:
        if word not in vocab:
            vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # The Metaspace-free "join with spaces" behaviour: WordPiece's decoder with an impossible prefix
    # joins tokens with single spaces and leaves them untouched.
    backend.decoder = decoders.WordPiece(prefix="\x00\x00", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        clean_up_tokenization_spaces=False,
        padding_side="left",  # an init argument, so save_pretrained keeps it (export/)
    )
    return tokenizer


def build_tiny_llama(tokenizer: PreTrainedTokenizerFast, arch: TinyArchConfig, seed: int) -> LlamaForCausalLM:
    """A small Llama whose weights depend only on ``seed`` (and the vocabulary size)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    devices = []  # fork_rng keeps the caller's global RNG stream untouched
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
