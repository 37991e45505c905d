"""The demo tokenizer: word level, trained locally with `tokenizers`, saved for transformers.

Special tokens follow Mistral's ids (`<unk>`=0, `<s>`=1, `</s>`=2) plus `<pad>`=3; like Mistral's
tokenizer it prepends BOS to every sequence (TemplateProcessing post-processor) and adds no EOS.
Text is lower-cased and split on whitespace and punctuation, so `"Output:" + "green"` and
`"Output: green"` give the same tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


def train_tokenizer(texts: Iterable[str], out_dir: str | Path | None = None):
    """Train a word-level tokenizer on `texts`; return it as a `PreTrainedTokenizerFast`.

    Every word of `texts` gets an id (min_frequency 1), so the demo tasks have no unknown words.
    When `out_dir` is given the tokenizer is saved there (tokenizer.json, tokenizer_config.json,
    special tokens) and loads with `AutoTokenizer.from_pretrained(out_dir)`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False)
    # Sorted unique lines: the trainer's vocabulary order then depends on the words only.
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=512,
    )
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast
