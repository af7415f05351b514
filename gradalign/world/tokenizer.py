"""The embedded world's tokenizer: one token per character, saved in Hugging Face format.

Owns: the special tokens, the character set and `build_tokenizer`. Does NOT own the models
(`world.model`), the task text (`world.arithmetic`) or where the tokenizer is saved (`world.builder`).
"""

from __future__ import annotations

import string

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = tuple(string.digits + string.ascii_letters + string.punctuation + " \n")


def build_tokenizer(chars: tuple[str, ...] = CHARS, max_length: int = 320):
    """A character-level `PreTrainedTokenizerFast`: one token per character, exact round trip.
    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then `chars` in order."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + tuple(chars))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )
    return fast
