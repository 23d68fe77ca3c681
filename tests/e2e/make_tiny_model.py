"""Build a tiny random-weight chat model that real vLLM serves on a CPU in seconds.

    .venv-vllm/bin/python tests/e2e/make_tiny_model.py OUT_DIR SEED

Run it with the vLLM venv's python (it has torch, transformers and tokenizers; the
project venv has none of them). OUT_DIR gets what `save_pretrained` writes for:

- a `LlamaForCausalLM` (hidden 128, 2 layers, 2 heads of 64, bfloat16, tied embeddings)
  with weights drawn from SEED, so two seeds give two different models;
- a byte-level BPE tokenizer (vocabulary 1024) trained with `tokenizers` on generated
  text, special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, wrapped in
  `PreTrainedTokenizerFast` with a ChatML chat template and `<|im_end|>` as EOS.

Nothing is fetched from a hub. The folder appears whole or not at all (built aside,
then renamed), so a cache check may look for it alone.
"""

import random
import shutil
import sys
from pathlib import Path
from typing import Any

VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS_TEXT = (
    "the a an of to in and is it you that he was for on are with as his they be at one "
    "have this from or had by hot word but what some we can out other were all there when "
    "up use your how said each she which do their time if will way about many then them "
    "write would like so these her long make thing see him two has look more day could go "
    "come did number sound no most people my over know water than call first who may down "
    "side been now find any new work part take get place made live where after back little "
    "only round man year came show every good me give our under name very through just form "
    "sentence great think say help low line differ turn cause much mean before move right "
    "boy old too same tell does set three want air well also play small end put home read "
    "hand port large spell add even land here must big high such follow act why ask men "
    "change went light kind off need house picture try us again animal point mother world "
    "model token stream gateway server latency queue cache switch download hello chat"
)
WORDS = WORDS_TEXT.split()


def corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    text = []
    for _ in range(lines):
        words = rng.choices(WORDS, k=rng.randint(4, 16))
        sentence = " ".join(words).capitalize() + rng.choice([".", "!", "?", ","])
        text.append(sentence + f" {rng.randint(0, 9999)}")
    return text


def build_tokenizer(seed: int) -> Any:
    """A byte-level BPE tokenizer (a `tokenizers.Tokenizer`) trained on corpus(seed)."""
    # Only the vLLM venv has these (the project venv, where mypy runs, has none).
    from tokenizers import (  # type: ignore[import-not-found]
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    return tokenizer


def build(out_dir: Path, seed: int) -> None:
    import torch  # type: ignore[import-not-found]
    from transformers import (  # type: ignore[import-not-found]
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(seed),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=1024,
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )

    out_dir = out_dir.resolve()
    work = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    shutil.rmtree(out_dir, ignore_errors=True)
    work.rename(out_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[2].isdigit():
        print(f"usage: {argv[0]} OUT_DIR SEED", file=sys.stderr)
        return 2
    build(Path(argv[1]), int(argv[2]))
    print(f"built a tiny model (seed {argv[2]}) in {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
