"""BERT's WordPiece tokenizer, run by the Rust `tokenizers` library.

The pipeline is BERT's (google-research/bert `tokenization.py`), stage by stage:

    normalizer     BertNormalizer: drop control chars, map whitespace to " ", put spaces around
                   every CJK character (so Chinese is split per character), lowercase and strip
                   accents for uncased vocabularies
    pre-tokenizer  BertPreTokenizer: split on whitespace and on every punctuation character
    model          WordPiece: greedy longest-match-first against vocab.txt, "##" continuations,
                   [UNK] for a word with no segmentation (or longer than 100 characters)
    post-processor [CLS] A [SEP] (type ids 0) / [CLS] A [SEP] B [SEP] (type ids 0... 1...)

Worked example with the bert-base-uncased vocabulary:

    >>> tok = Tokenizer.from_pretrained("shared/models/bert-base-uncased")
    >>> tok.tokenize("John Johanson's house, unaffable.")
    ['john', 'johan', '##son', "'", 's', 'house', ',', 'una', '##ffa', '##ble', '.']
    >>> enc = tok.encode("Hello, world!", "Bye")
    >>> enc.tokens
    ['[CLS]', 'hello', ',', 'world', '!', '[SEP]', 'bye', '[SEP]']
    >>> enc.type_ids, enc.offsets[1], enc.sequence_ids
    ([0, 0, 0, 0, 0, 0, 1, 1], (0, 5), [None, 0, 0, 0, 0, None, 1, None])
    >>> batch = tok(["a sentence", "another one here"], max_length=128)
    >>> batch["input_ids"].shape      # [B, T], padded to the longest row
    torch.Size([2, 5])

Offsets index the ORIGINAL text (before lowercasing/accent stripping), so `text[start:end]` is the
surface form of a token; `word_ids` group WordPieces of one pre-token (whole-word masking, NER
labels on the first piece).

Casing: an uncased vocabulary used with `do_lower_case=False` turns every capital letter into
[UNK]-heavy pieces, and a cased one used with lowercasing never produces its capitalised entries.
Both are silent accuracy losses, so a mismatch between the requested casing and the casing the
vocabulary itself shows is warned about (like google-research/bert's
`validate_case_matches_checkpoint`, which checks the checkpoint name instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from tokenizers import Encoding, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordPiece

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# BERT was pre-trained with 512 positions; longer inputs need a model with a larger position table.
DEFAULT_MODEL_MAX_LENGTH = 512


class CasingMismatchWarning(UserWarning):
    """The requested do_lower_case disagrees with the casing the vocabulary shows."""


def read_vocab_file(path: str | Path) -> list[str]:
    """vocab.txt -> tokens in id order (line i holds the token with id i)."""
    path = Path(path)
    tokens: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            token = line.rstrip("\n").rstrip("\r")
            # A duplicate would give two ids one token; the second id could never be produced.
            if token in seen:
                raise ValueError(f"{path}:{line_no}: token {token!r} already appears on line "
                                 f"{seen[token] + 1}; a vocab.txt must list each token once")
            seen[token] = len(tokens)
            tokens.append(token)
    if not tokens:
        raise ValueError(f"{path} is empty; expected one WordPiece token per line")
    return tokens


def vocab_casing(tokens: Iterable[str]) -> bool | None:
    """Guess whether a vocabulary is uncased (True), cased (False) or unknown (None).

    Counts word pieces that contain letters with case, ignoring "[...]" specials. bert-base-uncased
    has 0 of 26,930 such entries with a capital, bert-base-cased 8,366 of 26,955 (31%),
    bert-base-multilingual-cased 23%, bert-base-chinese 2 of 3,885 ("<S>", "<T>"). Fewer than
    100 cased-letter entries (a tiny or purely CJK vocab) says nothing either way.
    """
    with_case = with_upper = 0
    for token in tokens:
        if token.startswith("[") and token.endswith("]"):
            continue
        word = token[2:] if token.startswith("##") else token
        if any(ch.lower() != ch.upper() for ch in word):
            with_case += 1
            with_upper += any(ch.isupper() for ch in word)
    if with_case < 100:
        return None
    share = with_upper / with_case
    if share > 0.05:
        return False
    if share < 0.005:
        return True
    return None


def _check_casing(requested: bool, tokens: Sequence[str], source: str) -> None:
    inferred = vocab_casing(tokens)
    if inferred is None or inferred == requested:
        return
    if requested:
        detail = ("the vocabulary is cased (many entries have capitals), so lowercasing the input "
                  "means those entries are never used; pass do_lower_case=False (--cased)")
    else:
        detail = ("the vocabulary is uncased (no entries with capitals), so every capitalised word "
                  "becomes [UNK] or odd pieces; pass do_lower_case=True (--do_lower_case)")
    warnings.warn(f"do_lower_case={requested} ({source}) does not match the vocabulary: {detail}",
                  CasingMismatchWarning, stacklevel=3)


def _build_backend(vocab: dict[str, int], do_lower_case: bool, strip_accents: bool | None,
                   tokenize_chinese_chars: bool) -> RustTokenizer:
    backend = RustTokenizer(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##",
                                      max_input_chars_per_word=100))
    # strip_accents=None follows lowercase, as BERT's BasicTokenizer does.
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tokenize_chinese_chars, strip_accents=strip_accents,
        lowercase=do_lower_case)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _finish_backend(backend: RustTokenizer) -> None:
    """Register the specials (so "[MASK]" in text stays one token) and set the BERT template."""
    missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
    if missing:
        raise ValueError(f"the vocabulary lacks BERT's special token(s) {', '.join(missing)}; "
                         f"a BERT vocab.txt must contain {', '.join(SPECIAL_TOKENS)}")
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    backend.no_truncation()
    backend.no_padding()


class Tokenizer:
    """BERT WordPiece tokenizer (see the module docstring for a worked example).

    Build it with `Tokenizer.from_pretrained(dir | vocab.txt | hub id)` or
    `Tokenizer.from_vocab(tokens, do_lower_case)`.

    `vocab_hash` is sha256("\\n".join(tokens in id order)) as hex, first 16 characters: the same
    vocab.txt gives the same hash whether read from vocab.txt or tokenizer.json, so pre-training
    records can check they were made with the tokenizer now in use. Calls configure truncation
    on the shared `backend` for their duration, so one Tokenizer is not for concurrent threads.
    """

    def __init__(self, backend: RustTokenizer, do_lower_case: bool, *, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
        _finish_backend(backend)
        self._backend = backend
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = model_max_length
        self._id_to_token = self._tokens_in_id_order()
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            backend.token_to_id(t) for t in SPECIAL_TOKENS)
        self.vocab_hash = hashlib.sha256("\n".join(self._id_to_token).encode("utf-8")).hexdigest()[:16]

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_vocab(cls, vocab: Sequence[str] | str | Path, do_lower_case: bool | None = None, *,
                   strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                   model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
                   casing_source: str = "requested") -> "Tokenizer":
        """From tokens in id order (or a vocab.txt path). do_lower_case=None infers it from the
        vocabulary (uncased when unclear, BERT's default)."""
        source = str(vocab) if isinstance(vocab, (str, Path)) else "the given token list"
        tokens = read_vocab_file(vocab) if isinstance(vocab, (str, Path)) else list(vocab)
        if do_lower_case is None:
            inferred = vocab_casing(tokens)
            do_lower_case = True if inferred is None else inferred
        else:
            _check_casing(do_lower_case, tokens, casing_source)
        index = {t: i for i, t in enumerate(tokens)}
        if len(index) != len(tokens):
            raise ValueError(f"{source}: the vocabulary lists some token more than once")
        backend = _build_backend(index, do_lower_case, strip_accents, tokenize_chinese_chars)
        return cls(backend, do_lower_case, strip_accents=strip_accents,
                   tokenize_chinese_chars=tokenize_chinese_chars, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, do_lower_case: bool | None = None) -> "Tokenizer":
        """Load from a directory (tokenizer.json and/or vocab.txt, plus tokenizer_config.json),
        a vocab.txt or tokenizer.json file, or a Hugging Face hub id (downloaded when online).

        Casing, in order: the `do_lower_case` argument; tokenizer_config.json; the normalizer in
        tokenizer.json; the vocabulary's own casing. A mismatch with the vocabulary warns.
        """
        path = Path(path_or_id)
        if Path(f"{path}.index").is_file() or (path.is_file() and path.suffix == ".index"):
            # A Google TF checkpoint named by its prefix (bert_model.ckpt, as the model loader and
            # `bertkit info` take it) or its .index file: the vocab.txt and config sit beside it.
            path = path.parent
        if path.is_file() and path.suffix == ".json":
            return cls._from_tokenizer_json(path, do_lower_case, "do_lower_case argument", None, True,
                                            DEFAULT_MODEL_MAX_LENGTH)
        if path.is_file():
            return cls.from_vocab(path, do_lower_case, casing_source="do_lower_case argument")
        if not path.is_dir():
            path = _download_from_hub(str(path_or_id))
        config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        max_len = config.get("model_max_length")
        # transformers writes a huge sentinel (1e30) when the length is unknown.
        max_len = int(max_len) if isinstance(max_len, (int, float)) and 0 < max_len <= 1_000_000 else None
        if max_len is None:  # no tokenizer_config.json length: what the model's positions allow
            max_len = DEFAULT_MODEL_MAX_LENGTH
            for name in ("config.json", "bert_config.json"):
                positions = _read_json(path / name).get("max_position_embeddings") if (path / name).is_file() else None
                if isinstance(positions, int) and positions > 0:
                    max_len = min(max_len, positions)
                    break
        source = "do_lower_case argument"
        if do_lower_case is None and "do_lower_case" in config:
            do_lower_case, source = bool(config["do_lower_case"]), f"{path / 'tokenizer_config.json'}"
        strip_accents = config.get("strip_accents")
        chinese = bool(config.get("tokenize_chinese_chars", True))
        if (path / "tokenizer.json").is_file():
            return cls._from_tokenizer_json(path / "tokenizer.json", do_lower_case, source, strip_accents,
                                            chinese, max_len)
        if (path / "vocab.txt").is_file():
            return cls.from_vocab(path / "vocab.txt", do_lower_case, strip_accents=strip_accents,
                                  tokenize_chinese_chars=chinese, model_max_length=max_len,
                                  casing_source=source)
        raise FileNotFoundError(f"{path} has neither vocab.txt nor tokenizer.json; point at a BERT "
                                f"model directory or pass the vocab.txt file itself")

    @classmethod
    def _from_tokenizer_json(cls, file: Path, do_lower_case: bool | None, source: str,
                             strip_accents: bool | None, chinese: bool, max_len: int) -> "Tokenizer":
        spec = _read_json(file)
        model = spec.get("model") or {}
        if not model:
            raise ValueError(f"{file}: not a tokenizer.json (no \"model\" entry; a model's config.json?); "
                             f"pass the model directory, its tokenizer.json or its vocab.txt")
        if model.get("type") != "WordPiece":
            raise ValueError(f"{file}: model type is {model.get('type')!r}; bertkit reads BERT "
                             f"WordPiece tokenizers only (expected \"WordPiece\")")
        if model.get("continuing_subword_prefix", "##") != "##":
            raise ValueError(f"{file}: WordPiece continuation prefix is "
                             f"{model['continuing_subword_prefix']!r}; BERT uses '##'")
        norm = spec.get("normalizer") or {}
        if norm.get("type") != "BertNormalizer":
            raise ValueError(f"{file}: normalizer is {norm.get('type')!r}; a BERT tokenizer uses "
                             f"BertNormalizer (lowercasing, accent stripping, CJK splitting)")
        if do_lower_case is None:
            do_lower_case, source = bool(norm.get("lowercase", True)), f"{file} normalizer"
        if strip_accents is None:
            strip_accents = norm.get("strip_accents")
        chinese = bool(norm.get("handle_chinese_chars", chinese))
        backend = RustTokenizer.from_file(str(file))
        tokens = sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        _check_casing(do_lower_case, [t for t, _ in tokens], source)
        # Rebuild the normalizer and pre-tokenizer so the casing actually used is the one
        # reported by `do_lower_case`, whatever the file held.
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=bool(norm.get("clean_text", True)), handle_chinese_chars=chinese,
            strip_accents=strip_accents, lowercase=do_lower_case)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        return cls(backend, do_lower_case, strip_accents=strip_accents, tokenize_chinese_chars=chinese,
                   model_max_length=max_len)

    # ---- vocabulary -----------------------------------------------------------------------------
    def _tokens_in_id_order(self) -> list[str]:
        vocab = self._backend.get_vocab(with_added_tokens=True)
        tokens: list[str | None] = [None] * len(vocab)
        for token, i in vocab.items():
            if not 0 <= i < len(tokens) or tokens[i] is not None:
                raise ValueError(f"token ids are not 0..{len(vocab) - 1} without gaps (token {token!r} "
                                 f"has id {i}); vocab.txt cannot represent this vocabulary")
            tokens[i] = token
        return tokens  # type: ignore[return-value]

    @property
    def backend(self) -> RustTokenizer:
        """The `tokenizers.Tokenizer` doing the work (no truncation or padding configured)."""
        return self._backend

    @property
    def vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"vocab_hash={self.vocab_hash!r})")

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Unknown tokens map to unk_id, as in BERT."""
        if isinstance(tokens, str):
            found = self._backend.token_to_id(tokens)
            return self.unk_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]  # type: ignore[misc]

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | torch.Tensor) -> str | list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if isinstance(ids, int):
            if not 0 <= ids < self.vocab_size:
                raise ValueError(f"token id {ids} is outside the vocabulary (0..{self.vocab_size - 1})")
            return self._id_to_token[ids]
        return [self.convert_ids_to_tokens(i) for i in ids]  # type: ignore[misc]

    # ---- tokenizing -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """WordPieces of `text`, without [CLS]/[SEP]."""
        return self._backend.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str | Sequence[str], pair: str | Sequence[str] | None = None,
               max_length: int | None = None, truncation: str | bool = "longest_first",
               is_pretokenized: bool = False, add_special_tokens: bool = True, stride: int = 0) -> Encoding:
        """One text (or a list of words with is_pretokenized=True) -> `tokenizers.Encoding` with
        `ids`, `type_ids`, `tokens`, `offsets` (into the original text; per word when
        pretokenized), `word_ids`, `sequence_ids`. With max_length and truncation, the rest goes
        to `.overflowing` (windows overlapping by `stride` tokens)."""
        return self.encode_batch([text], None if pair is None else [pair], max_length=max_length,
                                 truncation=truncation, is_pretokenized=is_pretokenized,
                                 add_special_tokens=add_special_tokens, stride=stride)[0]

    def encode_batch(self, texts: Sequence[str] | Sequence[Sequence[str]],
                     pairs: Sequence[str] | Sequence[Sequence[str]] | None = None,
                     max_length: int | None = None, truncation: str | bool = "longest_first",
                     is_pretokenized: bool = False, add_special_tokens: bool = True,
                     stride: int = 0) -> list[Encoding]:
        """Many texts in one call of the Rust batch encoder (parallel, no Python per-token work)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts; use encode() for a single text")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"pairs has {len(pairs)} entries but texts has {len(texts)}; "
                             f"give one second segment per text")
        inputs: list[Any] = list(texts) if pairs is None else list(zip(texts, pairs))
        expected = (list, tuple) if is_pretokenized else str
        kind = "a list of words (is_pretokenized=True)" if is_pretokenized else "a str"
        for name, items in (("texts", texts), ("pairs", pairs or ())):
            for i, item in enumerate(items):
                if not isinstance(item, expected):
                    raise TypeError(f"{name}[{i}] is {type(item).__name__}; expected {kind}")
        self._configure_truncation(max_length, truncation, stride)
        try:
            return self._backend.encode_batch(inputs, is_pretokenized=is_pretokenized,
                                              add_special_tokens=add_special_tokens)
        except Exception as err:  # tokenizers raises plain Exception for truncation errors
            raise ValueError(f"could not truncate to max_length={max_length} with "
                             f"truncation={truncation!r}: {err}; use truncation='longest_first' "
                             f"or a larger max_length") from err
        finally:
            self._backend.no_truncation()

    def _configure_truncation(self, max_length: int | None, truncation: str | bool, stride: int) -> None:
        if truncation is True:
            truncation = "longest_first"
        if truncation is False or truncation is None or max_length is None:
            self._backend.no_truncation()
            return
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation={truncation!r} is not supported; valid: "
                             f"{', '.join(TRUNCATION_STRATEGIES)} or False")
        if max_length < 3:
            raise ValueError(f"max_length={max_length} leaves no room for text next to [CLS] and "
                             f"[SEP]; use max_length >= 3 (BERT tasks use 128..512)")
        self._backend.enable_truncation(max_length, stride=stride, strategy=truncation)

    def __call__(self, texts: str | Sequence[str] | Sequence[Sequence[str]],
                 pairs: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
                 max_length: int | None = None, truncation: str | bool = "longest_first",
                 padding: bool | str = True, return_tensors: bool = True,
                 is_pretokenized: bool = False) -> dict[str, Any]:
        """Texts (and optional second segments) -> model inputs.

        Rows longer than max_length (default: model_max_length, what the model's positions allow)
        are truncated. Returns `input_ids`, `token_type_ids`, `attention_mask`, each a long tensor
        [B, T]: T is the longest row (padding=True) or max_length (padding="max_length"). With
        return_tensors=False the values are lists of lists (unpadded when padding=False).
        """
        if max_length is None:
            max_length = self.model_max_length
        if isinstance(texts, str):
            texts = [texts]
            pairs = [pairs] if isinstance(pairs, str) else pairs
        if padding not in (True, False, "longest", "max_length"):
            raise ValueError(f"padding={padding!r} is not supported; valid: True (to the longest "
                             f"row), 'max_length', False")
        if padding is False and return_tensors:
            raise ValueError("padding=False gives rows of different lengths, which cannot form a "
                             "tensor; pass return_tensors=False or padding=True")
        encodings = self.encode_batch(texts, pairs, max_length=max_length, truncation=truncation,
                                      is_pretokenized=is_pretokenized)
        ids = [e.ids for e in encodings]
        types = [e.type_ids for e in encodings]
        if padding is False:
            return {"input_ids": ids, "token_type_ids": types, "attention_mask": [[1] * len(r) for r in ids]}
        longest = max((len(r) for r in ids), default=0)
        length = max_length if padding == "max_length" else longest
        if longest > length:
            row = next(i for i, r in enumerate(ids) if len(r) > length)
            raise ValueError(f"texts[{row}] has {len(ids[row])} tokens, more than "
                             f"max_length={max_length} with truncation={truncation!r}; enable "
                             f"truncation or raise max_length")
        # Scatter all rows at once through a [B, T] mask: a per-row tensor copy costs ~100 us a row.
        lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)
        real = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T] bool
        input_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
        input_ids[real] = torch.tensor(list(chain.from_iterable(ids)), dtype=torch.long)
        token_type_ids = torch.zeros((len(ids), length), dtype=torch.long)
        token_type_ids[real] = torch.tensor(list(chain.from_iterable(types)), dtype=torch.long)
        batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": real.long()}
        if not return_tensors:
            return {k: v.tolist() for k, v in batch.items()}
        return batch

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Ids -> text: "##" pieces joined to their word, spaces before punctuation removed."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- saving ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write vocab.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json, the
        files `transformers.AutoTokenizer.from_pretrained(directory)` reads."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "vocab.txt").write_text("".join(t + "\n" for t in self._id_to_token), encoding="utf-8")
        self._backend.save(str(out / "tokenizer.json"))
        specials = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                  "model_max_length": self.model_max_length, **specials}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _download_from_hub(repo_id: str) -> Path:
    """Fetch only the tokenizer files of a hub model; a clear error when that is impossible."""
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path.
    looks_like_path = (repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1
                       or repo_id.endswith((".txt", ".json")))
    if looks_like_path:
        raise FileNotFoundError(f"tokenizer path {repo_id!r} does not exist; pass a model directory "
                                f"(with vocab.txt or tokenizer.json) or a vocab.txt file")
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(repo_id, allow_patterns=list(TOKENIZER_FILES))
    except Exception as err:  # offline, unknown repo, gated: all end the same way for the user
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}). "
            f"Offline? Download the model elsewhere and pass its local directory (holding "
            f"vocab.txt or tokenizer.json) instead") from None
    path = Path(local)
    if not (path / "vocab.txt").is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"hub model {repo_id!r} has no vocab.txt or tokenizer.json; it is "
                                f"not a BERT WordPiece model")
    return path


def train_wordpiece(lines: Iterable[str] | Iterable[list[str]] | Callable[[], Iterable[Any]], vocab_size: int, *,
                    do_lower_case: bool = True, min_frequency: int = 2, limit_alphabet: int | None = 1000,
                    num_unused: int = 0) -> Tokenizer:
    """Learn a BERT WordPiece vocabulary from text lines (or batches of lines): a list, or a function
    that returns a fresh iterable of them, since the corpus is read twice (see below).

    Ids follow BERT's layout: [PAD]=0, then `num_unused` "[unusedK]" slots (room to add domain
    tokens later without resizing the embeddings; bert-base-uncased has 99 and [UNK]=100), then
    [UNK], [CLS], [SEP], [MASK], then the continuation characters ("##a", ...), the alphabet and the
    learned pieces. `limit_alphabet` keeps the most frequent characters only (BERT English vocabs
    hold ~1,000 single characters); pass None for Chinese, where every character of the corpus is a
    word of its own.

    Same corpus, same vocab.txt: the `tokenizers` trainer numbers the "##c" pieces in hash-map order,
    which changes from process to process, and breaks ties between equally frequent merges by those
    numbers (huggingface/tokenizers#1794): run to run, tokens moved and a few dozen differed. A first
    pass that learns no merges lists the "##c" pieces; the second pass gets them, sorted, as fixed
    tokens, so every number and merge is decided by the corpus alone.
    """
    from tokenizers import trainers

    if vocab_size < len(SPECIAL_TOKENS) + num_unused + 1:
        raise ValueError(f"--vocab-size {vocab_size} leaves no room for text pieces next to "
                         f"{len(SPECIAL_TOKENS) + num_unused} special/unused tokens; BERT uses 30522")
    if min_frequency < 1:
        raise ValueError(f"--min-frequency must be >= 1, got {min_frequency}")
    if callable(lines):
        read = lines
    elif iter(lines) is lines:  # type: ignore[arg-type]
        raise TypeError("train_wordpiece reads the corpus twice: pass a list of lines or a function that "
                        "returns a fresh iterable of them, not a one-shot iterator")
    else:
        read = lambda: lines  # noqa: E731
    reserved = [PAD] + [f"[unused{i}]" for i in range(num_unused)] + [UNK, CLS, SEP, MASK]

    def train(fixed: list[str], size: int) -> list[str]:
        backend = RustTokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=do_lower_case)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # The trainer takes no None for "unlimited"; leaving the argument out means that.
        alphabet = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
        trainer = trainers.WordPieceTrainer(vocab_size=size, min_frequency=min_frequency, special_tokens=fixed,
                                            continuing_subword_prefix="##", show_progress=False, **alphabet)
        backend.train_from_iterator(read(), trainer)
        return [t for t, _ in sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])]

    continuations = sorted(t for t in train(reserved, len(reserved) + 1) if t.startswith("##"))
    tokens = train(reserved + continuations, max(vocab_size, len(reserved) + len(continuations) + 1))
    if tokens[: len(reserved)] != reserved:
        raise RuntimeError(f"the WordPiece trainer did not put the reserved tokens first "
                           f"(got {tokens[: len(reserved)]}); cannot write a BERT-layout vocab.txt")
    # Rebuilding from the token list registers only BERT's five specials as added tokens, so
    # "[unused3]" or "##a" in text is tokenized like any other text, as with Google's vocabularies.
    return Tokenizer.from_vocab(tokens, do_lower_case)
