"""The one token estimate: how many tokens a text, and a request, will count before it is sent.

Used everywhere a count is needed before the provider says it: the job file's checks (`jobfile`), the
context-window precheck (`prechecks`), the token limiter's reservation and the spend cap (`runner`),
`batchrun estimate`, and the simulator's own billing — so that they never disagree.

A text is weighed in *units* of a quarter token: an ASCII character is one unit (about four characters
a token, as English prose and code tokenise), a character of a script that tokenises densely weighs
more (a Chinese character or a hangul syllable five units, a kana four). Units add across the texts
of a request and are rounded up to tokens once, so a conversation of ASCII messages counts
ceil(characters / 4) tokens.

The weights follow the encoding that spends more, cl100k_base: an estimate below the real count lets
the token limiter and the spend cap overshoot, one above it only leaves some of the allowance unused.
For a model on o200k_base, which packs most non-Latin scripts far denser, the estimate is therefore
high for those scripts (the last column). Measured on tests/fixtures/token_counts.json — 63 samples
written for it, short and long, each counted in cl100k_base and o200k_base by the npm package
gpt-tokenizer 4.0.0 (`tools/token_fixture`, rerun with `cd tools/token_fixture && npm install &&
node make_fixture.mjs`); tests/test_tokens.py holds the estimate to these bounds, no tokenizer at
run time:

    kind                      estimate / cl100k   estimate / o200k
    English prose             0.95 - 1.40         0.95 - 1.40     ASCII, fixed at 4 chars a token
    Python code               0.92 - 1.03         0.89 - 1.04     ASCII
    JSON                      0.62 - 0.71         0.62 - 0.71     ASCII: punctuation-dense, 2-3 chars a token
    French, German            0.87 - 1.11         1.05 - 1.43
    Polish, Vietnamese        0.84 - 1.03         1.06 - 1.69
    Chinese                   0.88 - 1.18         1.31 - 1.86
    Japanese                  0.95 - 1.21         1.35 - 1.75
    Korean                    0.98 - 1.25         1.38 - 2.14
    English + Chinese         1.00 - 1.29         1.15 - 1.59
    Russian                   1.19 - 1.48         2.22 - 2.69     Cyrillic weighs 3 for Ukrainian, on
    Ukrainian                 1.00 - 1.03         1.48 - 1.77     which cl100k spends 1.35x Russian's
    Greek                     0.98 - 1.09         2.29 - 2.76
    Arabic, Hebrew            0.90 - 0.96         2.08 - 2.55
    Hindi, Thai               0.99 - 1.11         2.58 - 3.47
    emoji-heavy               0.90 - 1.10         1.21 - 1.68

A text that is not all ASCII is weighed by blocks of 256 code points (`_BLOCKS`) in C: its UTF-16 high
bytes are mapped to their weights with `bytes.translate` and summed, so it never loops over
characters in Python. Measured on this machine (2 cores, shared with other work): 60-115 M characters/s
of Chinese or Russian text, 1.3-3 µs for a Chinese sentence of 23 characters.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_ASSUMED_COMPLETION", "UNITS_PER_TOKEN", "request_tokens", "text_tokens", "text_units",
           "tokens_for_units"]

#: units (quarter tokens) per token
UNITS_PER_TOKEN: Final = 4
#: completion tokens counted for a request that may answer at length but sets no cap
DEFAULT_ASSUMED_COMPLETION: Final = 256

#: (first block, last block, units a character): a block is 256 code points, `code >> 8`. U+0080-00FF
#: share block 0 with ASCII and weigh one unit more (`_non_ascii_units`). A character beyond U+FFFF is
#: a UTF-16 surrogate pair: its high surrogate carries its weight, its low one none.
_BLOCKS: Final = (
    (0x00, 0x00, 1),   # ASCII; Latin-1 letters (é, ü, ß: about as cheap as the letter they replace) 2
    (0x01, 0x02, 6),   # Latin Extended-A/B, IPA: ł ś ż ę ă ş ơ ư, one or two tokens each in cl100k
    (0x03, 0x03, 4),   # combining marks, Greek
    (0x04, 0x04, 3),   # Cyrillic
    (0x05, 0x05, 4),   # Cyrillic Supplement, Armenian, Hebrew
    (0x06, 0x08, 3),   # Arabic, Syriac, Thaana, NKo, Samaritan, Mandaic
    (0x09, 0x0D, 5),   # Devanagari, Bengali ... Sinhala
    (0x0E, 0x0E, 4),   # Thai, Lao
    (0x0F, 0x0F, 5),   # Tibetan
    (0x10, 0x1D, 4),   # Myanmar, Georgian, Hangul Jamo, Ethiopic, Khmer, Mongolian ...
    (0x1E, 0x1E, 8),   # Latin Extended Additional (Vietnamese ử ớ ể: about two tokens each)
    (0x1F, 0x1F, 4),   # Greek Extended
    (0x20, 0x20, 2),   # general punctuation (’ “ ” — …: as cheap as the ASCII they stand for), currency
    (0x21, 0x22, 4),   # letterlike, arrows, mathematical operators
    (0x23, 0x23, 8),   # technical symbols (⌚ ⏰: emoji, two or three tokens)
    (0x24, 0x25, 4),   # enclosed alphanumerics, box drawing, geometric shapes
    (0x26, 0x27, 8),   # miscellaneous symbols, dingbats (☕ ✨ ❤ ✌: emoji)
    (0x28, 0x2A, 4),   # Braille, supplemental arrows and mathematics
    (0x2B, 0x2B, 8),   # miscellaneous symbols and arrows (⬇ ⭐: emoji)
    (0x2C, 0x2F, 4),   # Glagolitic, Coptic, Tifinagh, supplemental punctuation, CJK radicals
    (0x30, 0x31, 4),   # CJK punctuation (、。「」), hiragana, katakana, bopomofo, compatibility jamo
    (0x32, 0x9F, 5),   # enclosed CJK, CJK compatibility, ideographs (extension A and unified)
    (0xA0, 0xAB, 4),   # Yi, Lisu, Vai, Cyrillic Extended-B, Bamum ...
    (0xAC, 0xD7, 5),   # Hangul syllables
    (0xD8, 0xDB, 10),  # a high surrogate: one character beyond U+FFFF (emoji, rare ideographs)
    (0xDC, 0xDF, 0),   # a low surrogate: weighed with its high one
    (0xE0, 0xF8, 4),   # private use
    (0xF9, 0xFA, 5),   # CJK compatibility ideographs
    (0xFB, 0xFD, 3),   # alphabetic and Arabic presentation forms
    (0xFE, 0xFF, 4),   # variation selectors, CJK compatibility forms, fullwidth forms (，！：)
)


def _block_table(blocks: tuple[tuple[int, int, int], ...]) -> bytes:
    table = bytearray(256)
    covered = 0
    for first, last, units in blocks:
        assert first == covered and last >= first, "the blocks must follow one another from 0"
        table[first:last + 1] = bytes([units]) * (last - first + 1)
        covered = last + 1
    assert covered == 256, "the blocks must cover every high byte"
    return bytes(table)


_BLOCK_UNITS: Final = _block_table(_BLOCKS)


def text_units(text: str) -> int:
    """The weight of `text` in quarter tokens (an ASCII character is one)."""
    if text.isascii():
        return len(text)
    return _non_ascii_units(text)


def _non_ascii_units(text: str) -> int:
    """Units of a text that is not all ASCII: each character weighs its block's units (`_BLOCKS`).

    All in C, no loop over characters in Python: the UTF-16 high byte of every code unit (its block),
    mapped to its units by `bytes.translate` and summed; U+0080-00FF, which share block 0 with ASCII,
    one unit more each. Measured on this machine: 60-115 M characters/s of Chinese or Russian text
    (1 M-character texts; the per-character loop it replaced did 6 and 13 M/s), 1.3-3 µs for a
    Chinese sentence of 23 characters.
    """
    blocks = text.encode("utf-16-be", "surrogatepass")[::2]
    latin1 = len(text.encode("latin-1", "ignore")) - len(text.encode("ascii", "ignore"))
    return sum(blocks.translate(_BLOCK_UNITS)) + latin1


def tokens_for_units(units: int) -> int:
    """Units rounded up to whole tokens."""
    return -(-units // UNITS_PER_TOKEN)


def text_tokens(text: str) -> int:
    """Estimated tokens of one text."""
    return tokens_for_units(text_units(text))


def request_tokens(input_tokens: int, output_cap: int | None, answers_at_length: bool,
                   assumed_completion: int = DEFAULT_ASSUMED_COMPLETION) -> tuple[int, int]:
    """(prompt, completion) tokens a request is expected to cost at most.

    The completion is the request's own cap (`max_tokens`, `max_completion_tokens`,
    `max_output_tokens`); without one, `assumed_completion` for an endpoint that answers at length
    (chat, completions, responses) and 0 for one that does not (embeddings, moderations).
    """
    if output_cap is not None:
        return input_tokens, output_cap
    return input_tokens, assumed_completion if answers_at_length else 0
