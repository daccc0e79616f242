"""Masked-LM masking strategies, shared by static masking (`pretrain-data`) and dynamic masking
(at batch time, `DynamicMasking`).

Every strategy works on one unpadded row `input_ids [L]` and returns
`(masked_input_ids [L], masked_positions [k], masked_ids [k])` with positions sorted ascending.
[CLS], [SEP], [PAD] and [MASK] are never chosen.

Words are found from the vocabulary, as google-research/bert does: a token whose string starts
with "##" continues the word before it. With the Chinese vocab every CJK character is its own word
(BERT's basic tokenizer splits them), so whole-word masking there masks characters.

Strategies:
- uniform (BERT): mask `masked_lm_prob` of the row (at least 1, at most `max_predictions_per_seq`),
  optionally whole words only (`whole_word_mask`, never splitting a word). Each chosen token becomes
  [MASK] 80% / a random token 10% / itself 10%.
- target words: occurrences of listed words are masked each with probability `target_mask_prob`
  (they are chosen first and count towards `max_predictions_per_seq`); other words are masked at
  `masked_lm_prob`, or not at all when it is 0: their budget is that of uniform masking for the row
  without its target tokens, so they are masked at the rate uniform masking gives (16.1% on the
  polyphone corpus's short rows; 15% of the whole row gave them 18.9% there).
- span (SpanBERT, Joshi et al. 2020): spans of whole words, until `masked_lm_prob` of the row is
  covered; spans never cross [SEP]. Each span's length is drawn from Geometric(p=0.2) clipped at 10
  words (mean 4.46 words, P(1) 20%, P(10) 13%), but the spans produced are shorter: one that does
  not fit the tokens left of the row's budget (min(max_predictions_per_seq, round(0.15 L)), 19 at
  L=128) is shortened to fit, and a span stops at [SEP] or at the row's end. Measured on 128-token
  WikiText-2 rows: mean 3.60 words, P(1) 27%, P(10) 6%; on 512-token rows (budget 77): 4.09
  words, 23%, 10% (on NSP rows with short rows and a [SEP] inside, `pretrain-data --span-mask`:
  3.41 words). Shortening keeps the masking rate at 15% (15.1% measured); dropping the span that
  does not fit would keep the lengths but mask fewer tokens. The 80/10/10 choice is made per span
  (all of a span's tokens become [MASK], or all random, or all kept), as in SpanBERT.
- mass (MASS, Song et al. 2019): in each segment (a run of words between [CLS]/[SEP]: sentence A and
  sentence B of an NSP row, each document of a packed row), one contiguous fragment of whole words
  covering `masked_lm_prob` of the segment's tokens (MASS's 50% is pretrain-data's default with
  --mass-mask). The fragment starts at a word drawn uniformly among those that leave room for it
  before the segment's end, and ends at the word boundary nearest to that share (at least one
  word). Fragments are cut to fit `max_predictions_per_seq` (pretrain-data's default for 0.5 is
  64 at length 128). Each token is replaced 80/10/10 on its own, as in MASS's encoder. An encoder
  has no MASS decoder: the MLM head predicts the fragment from the unmasked rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

STRATEGIES = ("uniform", "span", "mass")


@dataclass
class MaskingConfig:
    """How masked-LM targets are chosen. Stored in the record manifest."""

    masked_lm_prob: float = 0.15  # fraction of a row's tokens to predict
    max_predictions_per_seq: int = 20  # cap on predictions per row
    whole_word_mask: bool = False  # mask all word pieces of a word together
    strategy: str = "uniform"  # uniform | span | mass
    target_mask_prob: float = 0.0  # probability of masking each occurrence of a target word
    span_geometric_p: float = 0.2  # drawn span lengths (in words) ~ Geometric(p), SpanBERT's value (see module doc)
    span_max_words: int = 10  # longest span, in words
    mask_token_prob: float = 0.8  # of the chosen tokens: replaced by [MASK]
    random_token_prob: float = 0.1  # ... replaced by a random token (the rest keep their id)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"masking strategy {self.strategy!r} is unknown; valid: {', '.join(STRATEGIES)}")
        if not 0.0 <= self.masked_lm_prob < 1.0:
            raise ValueError(f"--masked-lm-prob must be in [0, 1), got {self.masked_lm_prob}")
        if not 0.0 <= self.target_mask_prob <= 1.0:
            raise ValueError(f"--target-mask-prob must be in [0, 1], got {self.target_mask_prob}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(f"--max-predictions-per-seq must be >= 1, got {self.max_predictions_per_seq}")
        if self.mask_token_prob + self.random_token_prob > 1.0 or min(self.mask_token_prob, self.random_token_prob) < 0:
            raise ValueError("mask_token_prob + random_token_prob must lie in [0, 1]")
        if not 0.0 < self.span_geometric_p <= 1.0 or self.span_max_words < 1:
            raise ValueError("span masking needs 0 < span_geometric_p <= 1 and span_max_words >= 1")


@dataclass
class VocabInfo:
    """What masking needs to know about the vocabulary."""

    vocab_size: int
    mask_id: int
    special_ids: np.ndarray  # [S] ids never masked ([CLS], [SEP], [PAD], [MASK], [UNK] stays maskable)
    is_continuation: np.ndarray  # bool [V]: the token string starts with "##"
    replacement_ids: np.ndarray = field(init=False)  # [R] ids a "random token" is drawn from
    is_special: np.ndarray = field(init=False)  # bool [V]: a lookup table (np.isin per row costs more)

    def __post_init__(self) -> None:
        self.is_special = np.zeros(self.vocab_size, dtype=bool)
        self.is_special[self.special_ids] = True
        self.replacement_ids = np.flatnonzero(~self.is_special).astype(np.int32)

    def maskable(self, ids: np.ndarray) -> np.ndarray:
        """bool [L]: the tokens masking may choose (ids outside the vocabulary count as maskable)."""
        return ~self.is_special[np.clip(ids, 0, self.vocab_size - 1)] | (ids >= self.vocab_size)

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int], special_tokens: Sequence[str] = ("[CLS]", "[SEP]", "[PAD]", "[MASK]")
                   ) -> "VocabInfo":
        """From a token -> id mapping (e.g. `Tokenizer.vocab`)."""
        size = max(vocab.values()) + 1
        is_cont = np.zeros(size, dtype=bool)
        for token, idx in vocab.items():
            if token.startswith("##"):
                is_cont[idx] = True
        missing = [t for t in special_tokens if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special token(s) {missing}; BERT masking needs "
                             f"{', '.join(special_tokens)}")
        special = np.array(sorted(vocab[t] for t in special_tokens), dtype=np.int64)
        return cls(vocab_size=size, mask_id=vocab["[MASK]"], special_ids=special, is_continuation=is_cont)


def word_spans(input_ids: np.ndarray, vocab: VocabInfo) -> np.ndarray:
    """Maskable words of a row as [W, 2] (start, end) token ranges, end exclusive.

    A word starts at every maskable token that is not a "##" continuation, and also at a
    continuation whose left neighbour is special (e.g. a segment truncated inside a word).
    """
    ids = np.asarray(input_ids)
    maskable = vocab.maskable(ids)
    cont = vocab.is_continuation[np.clip(ids, 0, vocab.vocab_size - 1)]
    prev_maskable = np.concatenate([[False], maskable[:-1]])
    starts = maskable & (~cont | ~prev_maskable)
    start_idx = np.flatnonzero(starts)
    if start_idx.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # A word runs from its start until the next start or the next non-maskable token.
    b_idx = np.flatnonzero(starts | ~maskable)
    # For each start s, the first boundary strictly after s (or the row end).
    pos = np.searchsorted(b_idx, start_idx, side="right")
    ends = np.where(pos < b_idx.size, b_idx[np.minimum(pos, b_idx.size - 1)], ids.size)
    return np.stack([start_idx, ends], axis=1)


def _replace(input_ids: np.ndarray, positions: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator,
             config: MaskingConfig, vocab: VocabInfo) -> np.ndarray:
    """Apply the 80/10/10 replacement. `groups` [k] gives each position's span id so that a span
    shares one decision (span masking); None decides per token."""
    out = input_ids.copy()
    if positions.size == 0:
        return out
    n_dec = positions.size if groups is None else int(groups.max()) + 1
    u = rng.random(n_dec)
    if groups is not None:
        u = u[groups]
    to_mask = u < config.mask_token_prob
    to_random = (u >= config.mask_token_prob) & (u < config.mask_token_prob + config.random_token_prob)
    out[positions[to_mask]] = vocab.mask_id
    n_rand = int(to_random.sum())
    if n_rand:
        out[positions[to_random]] = vocab.replacement_ids[rng.integers(0, vocab.replacement_ids.size, n_rand)]
    return out


def _budget(length: int, config: MaskingConfig) -> int:
    # google-research/bert: max(1, round(len(tokens) * prob)) with [CLS]/[SEP] counted in len.
    return min(config.max_predictions_per_seq, max(1, int(round(length * config.masked_lm_prob))))


def _pick_words(spans: np.ndarray, order: np.ndarray, budget: int, taken: int) -> list[int]:
    """Greedily take words in `order` while they fit in `budget` tokens (a word that would overflow
    is skipped, never split).

    Vectorised: the greedy scan takes the whole prefix whose running length fits; after the first
    word that does not, only words no longer than the room left can still be taken, and each one
    taken shrinks the room, so the remaining scan is a few steps, not one per word."""
    room = budget - taken
    if room <= 0 or len(order) == 0:
        return []
    order = np.asarray(order)
    lengths = spans[order, 1] - spans[order, 0]
    fits = np.cumsum(lengths) <= room
    first_misfit = int(np.argmin(fits)) if not fits.all() else len(order)
    chosen = order[:first_misfit].tolist()
    room -= int(lengths[:first_misfit].sum())
    i = first_misfit + 1
    while room > 0:
        small = np.flatnonzero(lengths[i:] <= room)
        if small.size == 0:
            break
        j = i + int(small[0])
        chosen.append(int(order[j]))
        room -= int(lengths[j])
        i = j + 1
    return chosen


def _token_positions(spans: np.ndarray) -> np.ndarray:
    """[W,2] (start, end) token ranges -> every position of every range, range after range."""
    if len(spans) == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = spans[:, 1] - spans[:, 0]
    first_of_range = np.cumsum(lengths) - lengths  # where each range starts in the output
    return np.arange(int(lengths.sum())) + np.repeat(spans[:, 0] - first_of_range, lengths)


def _positions_of(spans: np.ndarray, words: Sequence[int]) -> np.ndarray:
    return _token_positions(spans[np.asarray(words, dtype=np.int64)]) if len(words) else np.zeros(0, dtype=np.int64)


def mask_row(input_ids: np.ndarray, rng: np.random.Generator, config: MaskingConfig, vocab: VocabInfo,
             target_words: np.ndarray | None = None, spans: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask one row.

    input_ids: int [L] (with [CLS]/[SEP]); target_words: bool [W] over `word_spans(input_ids)`
    marking target-word occurrences, or None; spans: that `word_spans` result when the caller
    already has it.
    Returns (masked_input_ids int32 [L], masked_positions int32 [k], masked_ids int32 [k]).
    """
    ids = np.asarray(input_ids, dtype=np.int32)
    empty = np.zeros(0, dtype=np.int32)
    if config.strategy == "span":
        positions, groups = _span_positions(ids, rng, config, vocab)
        out = _replace(ids, positions, groups, rng, config, vocab)
        return out, positions.astype(np.int32), ids[positions].astype(np.int32)
    if config.strategy == "mass":
        positions = _fragment_positions(ids, rng, config, vocab)
        out = _replace(ids, positions, None, rng, config, vocab)
        return out, positions.astype(np.int32), ids[positions].astype(np.int32)

    cap = config.max_predictions_per_seq
    if not config.whole_word_mask and target_words is None:
        # Fast path: every maskable token is its own candidate.
        cand = np.flatnonzero(vocab.maskable(ids))
        if cand.size == 0:
            return ids.copy(), empty, empty
        k = min(_budget(ids.size, config), cand.size) if config.masked_lm_prob > 0 else 0
        positions = np.sort(rng.choice(cand, size=k, replace=False)) if k else np.zeros(0, dtype=np.int64)
    else:
        spans = word_spans(ids, vocab) if spans is None else spans
        if not config.whole_word_mask:
            # Other words' pieces become candidates one by one; a target occurrence stays one
            # candidate, masked whole or not at all: "ana ##rch [MASK]" would give the word away.
            lengths = spans[:, 1] - spans[:, 0]
            whole = (np.zeros(len(spans), dtype=bool) if target_words is None
                     else np.asarray(target_words, dtype=bool))
            counts = np.where(whole, 1, lengths)
            owner = np.repeat(np.arange(len(spans)), counts)
            first = np.zeros(len(spans) + 1, dtype=np.int64)
            np.cumsum(counts, out=first[1:])
            starts = spans[owner, 0] + (np.arange(owner.size) - first[owner])
            ends = np.where(whole[owner], spans[owner, 1], starts + 1)
            spans = np.stack([starts, ends], axis=1) if owner.size else np.zeros((0, 2), np.int64)
            target_words = whole[owner] if target_words is not None else None
        chosen: list[int] = []
        taken = 0
        is_target = np.zeros(len(spans), dtype=bool) if target_words is None else np.asarray(target_words, bool)
        if target_words is not None:
            t_idx = np.flatnonzero(is_target)
            hit = t_idx[rng.random(t_idx.size) < config.target_mask_prob]
            rng.shuffle(hit)
            chosen = _pick_words(spans, hit, cap, 0)
            taken = int((spans[chosen, 1] - spans[chosen, 0]).sum()) if chosen else 0
        if config.masked_lm_prob > 0:
            others = np.flatnonzero(~is_target)
            order = rng.permutation(others)
            # On top of the targets, the usual 15% of the row without its target tokens: 15% of the
            # whole row masked other words at 18.9% on the polyphone corpus, whose targets are
            # common characters (the row's share they take would go to the others).
            target_tokens = int((spans[is_target, 1] - spans[is_target, 0]).sum())
            budget = min(cap, taken + _budget(ids.size - target_tokens, config))
            chosen += _pick_words(spans, order, budget, taken)
        positions = np.sort(_positions_of(spans, chosen))
    out = _replace(ids, positions, None, rng, config, vocab)
    return out, positions.astype(np.int32), ids[positions].astype(np.int32)


def _span_positions(ids: np.ndarray, rng: np.random.Generator, config: MaskingConfig,
                    vocab: VocabInfo) -> tuple[np.ndarray, np.ndarray]:
    """SpanBERT span selection -> (positions [k] sorted, span id of each position [k])."""
    spans = word_spans(ids, vocab)
    n_words = len(spans)
    if n_words == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    budget = _budget(ids.size, config)
    # A span may not cross a special token: words w and w+1 are joinable when adjacent in the row.
    joinable = np.concatenate([spans[1:, 0] == spans[:-1, 1], [False]])
    used = np.zeros(n_words, dtype=bool)
    picked: list[tuple[int, int]] = []  # (first word, last word exclusive)
    taken = 0
    for _ in range(4 * n_words):  # bounded tries: dense rows may not fit the full budget
        if taken >= budget:
            break
        length = min(int(rng.geometric(config.span_geometric_p)), config.span_max_words)
        w0 = int(rng.integers(0, n_words))
        w1 = w0 + 1
        while w1 - w0 < length and w1 < n_words and joinable[w1 - 1]:
            w1 += 1
        if used[w0:w1].any():
            continue
        n_tok = int(spans[w1 - 1, 1] - spans[w0, 0])
        if taken + n_tok > budget:
            # Shrink the span to what is left rather than give up: keeps the rate near budget, and
            # makes the produced lengths shorter than the drawn ones (numbers in the module doc).
            while w1 > w0 + 1 and taken + int(spans[w1 - 1, 1] - spans[w0, 0]) > budget:
                w1 -= 1
            n_tok = int(spans[w1 - 1, 1] - spans[w0, 0])
            if taken + n_tok > budget:
                continue
        used[w0:w1] = True
        picked.append((w0, w1))
        taken += n_tok
    picked.sort()
    pos = [np.arange(spans[a, 0], spans[b - 1, 1]) for a, b in picked]
    if not pos:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    groups = np.concatenate([np.full(p.size, g) for g, p in enumerate(pos)])
    return np.concatenate(pos), groups


def _fragment_positions(ids: np.ndarray, rng: np.random.Generator, config: MaskingConfig,
                        vocab: VocabInfo) -> np.ndarray:
    """MASS fragment selection: one run of whole words per segment -> positions [k] sorted."""
    spans = word_spans(ids, vocab)
    room = config.max_predictions_per_seq
    fragments: list[np.ndarray] = []
    # Segments are runs of adjacent words; a special token between two words ends one.
    segment_starts = np.flatnonzero(spans[1:, 0] != spans[:-1, 1]) + 1 if len(spans) else []
    for segment in np.split(spans, segment_starts):
        if not len(segment) or room <= 0:
            continue
        segment_tokens = int(segment[-1, 1] - segment[0, 0])
        wanted = min(room, max(1, int(round(segment_tokens * config.masked_lm_prob))))
        # Any start that leaves `wanted` tokens before the segment's end; the first word always does.
        first = int(rng.choice(np.flatnonzero(segment[-1, 1] - segment[:, 0] >= wanted)))
        lengths = segment[first:, 1] - segment[first, 0]  # tokens of the fragment ending at each word
        allowed = lengths <= room
        if not allowed[0]:  # its first word alone is longer than the predictions left
            continue
        last = first + int(np.argmin(np.where(allowed, np.abs(lengths - wanted), np.iinfo(np.int64).max)))
        fragments.append(np.arange(segment[first, 0], segment[last, 1]))
        room -= int(segment[last, 1] - segment[first, 0])
    return np.concatenate(fragments) if fragments else np.zeros(0, dtype=np.int64)


class TargetWords:
    """Occurrences of listed words (`--target-words FILE`, one word or character per line).

    Each listed word is tokenized into word pieces; an occurrence is a whole word of a row
    (see `word_spans`) whose pieces equal a listed word's pieces. Multi-word phrases are not
    matched (a listed line with spaces is rejected)."""

    def __init__(self, piece_sequences: set[tuple[int, ...]]):
        self.sequences = piece_sequences
        self.single = np.array(sorted(s[0] for s in piece_sequences if len(s) == 1), dtype=np.int64)
        self.multi = {s for s in piece_sequences if len(s) > 1}

    def __call__(self, input_ids: np.ndarray, spans: np.ndarray) -> np.ndarray:
        """bool [W]: which words of `spans` ([W,2] from `word_spans`) are targets."""
        lengths = spans[:, 1] - spans[:, 0]
        hit = (lengths == 1) & np.isin(np.asarray(input_ids)[spans[:, 0]], self.single)
        if self.multi:
            ids = np.asarray(input_ids)
            for w in np.flatnonzero(lengths > 1):
                hit[w] = tuple(ids[spans[w, 0]:spans[w, 1]].tolist()) in self.multi
        return hit


class DynamicMasking:
    """Masking at batch time: `masking(input_ids [L], rng) -> (masked [L], positions [k], ids [k])`.

    Rows carry no stored masks when records were made with `--masking dynamic`; each epoch then
    sees fresh masks. `rng` is a `np.random.Generator` owned by the data loader (seeded per
    worker and epoch by the caller for reproducible runs); without one the instance's own
    generator (from `seed`) is used."""

    def __init__(self, config: MaskingConfig, vocab: VocabInfo, targets: TargetWords | None = None,
                 seed: int | None = None):
        self.config = config
        self.vocab = vocab
        self.targets = targets
        self.rng = np.random.default_rng(seed)  # used when a call passes no rng

    def __call__(self, input_ids: np.ndarray, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng if rng is None else rng
        ids = np.asarray(input_ids, dtype=np.int32)
        if self.targets is None:
            return mask_row(ids, rng, self.config, self.vocab)
        spans = word_spans(ids, self.vocab)
        return mask_row(ids, rng, self.config, self.vocab, self.targets(ids, spans), spans)
