"""Tokenizer: SmolLM2's byte-level BPE from GGUF metadata, and its chat template."""
import pytest

from hcemu.model.tokenizer import Tokenizer
from model_helpers import write_tiny_gguf


@pytest.fixture(scope="module")
def tok(smollm2_gguf):
    return Tokenizer.from_gguf(smollm2_gguf)


TEXTS = [
    "Hello world",
    "The year 2024 had 366 days.",
    "I'm here, don't go\n\n  x",
    "def f(x):\n    return x**2  # ok\n\tpass\n",
    "héllo 日本語 🤖 naïve café Ωμέγα",
    "   leading and trailing spaces   ",
    "",
    "a\r\nb\u00a0c\u200bd",
]


@pytest.mark.model
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.model
def test_pre_tokenizer_rules(tok):
    """smollm = every digit on its own, then the GPT-2 split (llama.cpp llama-vocab.cpp, HF tokenizer.json)."""
    pieces = lambda s: [tok.id_to_token(i) for i in tok.encode(s)]  # noqa: E731
    assert pieces("Hello world") == ["Hello", "Ġworld"]                       # ' ?\p{L}+' keeps the space
    assert pieces("year 2024") == ["year", "Ġ", "2", "0", "2", "4"]            # digits split individually
    assert pieces("I'm") == ["I", "'m"]                                       # contraction rule
    assert pieces("a  b") == ["a", "Ġ", "Ġb"]                                 # '\s+(?!\S)' leaves one space
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("") == []


@pytest.mark.model
def test_special_tokens(tok):
    assert tok.token_to_id("<|im_start|>") == 1 and tok.token_to_id("<|im_end|>") == 2
    assert tok.token_to_id("<|endoftext|>") == 0
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 5
    assert tok.add_bos is False  # tokenizer.ggml.add_bos_token is false in this file (as in HF SmolLM2)
    assert tok.encode("x", add_special=True) == tok.encode("x")
    assert tok.decode(ids, skip_special=True) == "user\nHi"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([49152])


@pytest.mark.model
def test_chat_template(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    # the system turn comes from the template itself when messages[0] is not a system message
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    text2 = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert text2 == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    with pytest.raises(ValueError, match="role"):
        tok.apply_chat_template([{"content": "x"}])


def test_tiny_vocab_and_errors(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, tokenizer=True)
    t = Tokenizer.from_gguf(path)
    assert t.vocab_size == 80 and t.special_tokens == ("<s>", "</s>")
    assert t.encode("<s></s>") == [0, 1]
    with pytest.raises(ValueError, match="chat template"):
        t.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(TypeError):
        t.encode(b"bytes")
    with pytest.raises(ValueError, match="pre-tokenizer 'nonsense'"):
        Tokenizer(["a", "b"], [], pre="nonsense")
    with pytest.raises(ValueError, match="merge"):
        Tokenizer(["a", "b"], ["a b c"])
