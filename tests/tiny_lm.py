"""Tiny Hugging Face language models the tests build offline: a BPE tokenizer trained on a
small text file here, and random models of each family saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

SENTENCES = ["the cat sat on the mat. ", "a dog ran to the park! ", "we like green tea; ",
             "naïve café au lait. "]
# Llama-family configs: grouped-query attention (4 query heads over 2 key-value groups),
# RMSNorm, gated MLP; 2 blocks of width 32 and 64 MLP channels
FAMILIES = ("llama", "mistral", "qwen2")


def corpus_and_tokenizer(root: Path):
    """(text file, tokenizer): a 300-token byte-level BPE trained on the text."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = root / "tiny.txt"
    corpus.write_text("".join(SENTENCES[i % 4] for i in range(200)), encoding="utf-8")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([corpus.read_text()], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>",
                                                     eos_token="<eos>")
    return corpus, tokenizer


def save_family(root: Path, family: str, tokenizer, layers: int = 2, hidden: int = 32,
                intermediate: int = 64) -> Path:
    """A random model of `family` saved with its tokenizer; its weights are rounded to
    bfloat16 values (kept in float32), so loading it in bfloat16 or float16 changes no
    weight and the dtypes' masks can differ only where activations are rounded."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(
        family, vocab_size=len(tokenizer) + 8, hidden_size=hidden,
        intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=1,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    folder = root / family
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
