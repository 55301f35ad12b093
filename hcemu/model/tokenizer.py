"""Tokenizer: the byte-level BPE tokenizer stored in a GGUF file, run by the ``tokenizers`` package.

Built from ``tokenizer.ggml.tokens`` / ``merges`` / ``token_type``; control tokens (type 3) and
user-defined tokens (type 4) are added as special tokens, so text such as ``<|im_start|>`` maps to
its single id. The pre-tokenizer follows ``tokenizer.ggml.pre`` as llama.cpp defines it
(``llama-vocab.cpp``):

* ``smollm`` (also ``starcoder``, ``refact``, ``command-r``, ``codeshell``, ``exaone``, ``minerva``):
  every digit is split off on its own (``\\p{N}``), then the GPT-2 regex
  ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``. This is also
  what SmolLM2's ``tokenizer.json`` on the Hub does (``Digits(individual_digits=True)`` followed by
  ``ByteLevel(add_prefix_space=False, use_regex=True)``).
* ``gpt2`` (also ``default``, ``mpt``, ``olmo``, ``jais``): the GPT-2 regex alone.
* ``llama-bpe`` (Llama 3): the Llama 3 regex, then byte-level mapping.

No space is prepended and, by default, no BOS is added (``add_special=True`` adds it when the file
says ``tokenizer.ggml.add_bos_token``). Chat prompts come from :meth:`apply_chat_template`, which renders
the file's Jinja ``tokenizer.chat_template`` the way Hugging Face ``transformers`` does.
"""
from __future__ import annotations

import os
from pathlib import Path

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_GPT2 = ("gpt2", "default", "mpt", "olmo", "jais")
_LLAMA3 = ("llama-bpe", "llama3")

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers as pt

    if pre in _DIGITS_THEN_GPT2:
        return pt.Sequence([pt.Digits(individual_digits=True),
                            pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    if pre in _GPT2:
        return pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in _LLAMA3:
        return pt.Sequence([pt.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
                            pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    known = ", ".join(_DIGITS_THEN_GPT2 + _GPT2 + _LLAMA3)
    raise ValueError(f"tokenizer pre-tokenizer {pre!r} is not supported; known: {known}")


class Tokenizer:
    """A GGUF byte-level BPE tokenizer (``tokenizer.ggml.model == "gpt2"``)."""

    def __init__(self, tokens, merges, token_types=None, pre: str = "gpt2", bos_id=None, eos_id=None,
                 add_bos: bool = False, chat_template: str | None = None):
        from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models

        tokens = [str(t) for t in tokens]
        if not tokens:
            raise ValueError("tokenizer has no tokens")
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        pairs = []
        for m in merges:
            parts = str(m).split(" ")
            if len(parts) != 2:
                raise ValueError(f"malformed BPE merge {m!r} (expected two tokens separated by one space)")
            pairs.append((parts[0], parts[1]))
        self.tokens = tokens
        self.vocab_size = len(tokens)
        self.pre = pre
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.add_bos = bool(add_bos)
        self.chat_template = chat_template
        for what, i in (("bos_id", self.bos_id), ("eos_id", self.eos_id)):
            if i is not None and not 0 <= i < len(tokens):
                raise ValueError(f"tokenizer {what} {i} is outside the vocabulary 0..{len(tokens) - 1}")
        special = []
        if token_types is not None:
            if len(token_types) != len(tokens):
                raise ValueError(f"token_type has {len(token_types)} entries but there are {len(tokens)} tokens")
            special = [tokens[i] for i, ty in enumerate(token_types)
                       if int(ty) in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
        try:  # the tokenizers library raises a bare Exception for a vocabulary its BPE model refuses
            tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
            tk.pre_tokenizer = _pre_tokenizer(pre)
            tk.decoder = decoders.ByteLevel()
            tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"the tokenizers library refuses this vocabulary or its merges: {exc}") from None
        self.special_tokens = tuple(special)
        self._tk = tk
        for t in special:  # added tokens must keep their GGUF ids
            if tk.token_to_id(t) != vocab[t]:
                raise ValueError(f"special token {t!r} got id {tk.token_to_id(t)}, expected {vocab[t]}")

    @classmethod
    def from_gguf(cls, source_or_path) -> "Tokenizer":
        """From a :class:`~hcemu.model.gguf_source.GGUFSource` or a ``.gguf`` path."""
        from hcemu.model.gguf_source import GGUFSource

        src = source_or_path if isinstance(source_or_path, GGUFSource) else GGUFSource(source_or_path)
        meta = src.metadata
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{src.path}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise ValueError(f"{src.path}: metadata key {key!r} is missing")

        def typed(key, ok, kind, default=None):
            v = meta.get(key, default)
            if v is not None and not ok(v):
                raise ValueError(f"{src.path}: metadata {key!r} must be {kind}, got {type(v).__name__}")
            return v

        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        strings = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
        try:
            return cls(typed("tokenizer.ggml.tokens", strings, "a list of strings"),
                       typed("tokenizer.ggml.merges", strings, "a list of strings"),
                       typed("tokenizer.ggml.token_type", lambda v: isinstance(v, list) and all(map(is_int, v)),
                             "a list of integers"),
                       typed("tokenizer.ggml.pre", lambda v: isinstance(v, str), "a string", "gpt2"),
                       typed("tokenizer.ggml.bos_token_id", is_int, "an integer"),
                       typed("tokenizer.ggml.eos_token_id", is_int, "an integer"),
                       typed("tokenizer.ggml.add_bos_token", lambda v: isinstance(v, bool), "true or false", False),
                       typed("tokenizer.chat_template", lambda v: isinstance(v, str), "a string"))
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(str(src.path)) else f"{src.path}: {msg}") from None

    # ---- text <-> ids
    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in the text map to their ids.

        ``add_special``: prepend BOS if the file asks for it (``tokenizer.ggml.add_bos_token``).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = self._tk.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self._tk.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int:
        i = self._tk.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    def id_to_token(self, i: int) -> str:
        return self.tokens[int(i)]

    # ---- chat
    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """Render ``tokenizer.chat_template`` (Jinja, sandboxed, ``trim_blocks`` and ``lstrip_blocks``
        as in ``transformers``) for ``messages`` (a list of ``{"role": ..., "content": ...}``)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template (tokenizer.chat_template)")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:  # pragma: no cover - jinja2 is a dependency
            raise ImportError("chat templates need the 'jinja2' package") from e

        def raise_exception(msg):
            raise jinja2.exceptions.TemplateError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                           extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        tokens = self.tokens
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=tokens[self.bos_id] if self.bos_id is not None else "",
            eos_token=tokens[self.eos_id] if self.eos_id is not None else "")

    def __repr__(self):
        return f"Tokenizer(vocab={self.vocab_size}, pre={self.pre!r}, bos={self.bos_id}, eos={self.eos_id})"


def tokenizer_for(path) -> Tokenizer:
    """Shorthand for :meth:`Tokenizer.from_gguf` on a path."""
    return Tokenizer.from_gguf(Path(path))


def load_tokenizer(image) -> "Tokenizer | None":
    """The tokenizer of the GGUF a compiled image (anything with ``.spec.source``) was built from, or
    None when there is none (synthetic weights, or the GGUF is no longer on disk)."""
    src = image.spec.source
    if src and src.endswith(".gguf") and os.path.exists(src):
        return Tokenizer.from_gguf(src)
    return None
