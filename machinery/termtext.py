"""Text on a terminal: cell widths, sanitizing model output, word-wrapping and clipping by cells.

label_tool.py draws every line through these, so a sampled response can neither drive the terminal
(escape sequences) nor break the layout. The cells one code point takes are decided in `char_width`
alone, by the `wcwidth` package: the maintained table of terminal cell widths (wide CJK / emoji = 2
cells, combining marks = 0), kept current with Unicode, which pyte (tests/terminal.py) uses too. A
table of our own, built from Python's unicodedata, disagreed with terminals on soft hyphens and on
symbols drawn two cells wide (U+4DC0 HEXAGRAM FOR THE CREATIVE HEAVEN), so a full line lost its
tail or spilled into the next row. `sanitize` removes what terminals still disagree on. No torch
here: label_tool.py must start without it.
"""

import unicodedata

from wcwidth import wcwidth


def char_width(ch: str) -> int:
    """Terminal cells taken by one code point, as `wcwidth.wcwidth` says: 0 for combining marks, 2
    for wide characters (CJK, emoji), 1 otherwise; two exceptions below."""
    w = wcwidth(ch)
    if w < 0:  # a control character: never drawn, `sanitize` shows a picture in 1 cell instead
        return 1
    # A spacing mark (Mc: the vowel signs of Devanagari and other Indic scripts) takes a cell of
    # its own where curses places it (the C library's wcwidth), in xterm, and in wcwidth's own
    # wcswidth after a narrow letter; wcwidth.wcwidth alone says 0, leaving that to wcswidth.
    if w == 0 and unicodedata.category(ch) == "Mc":
        return 1
    return w


def text_width(s: str) -> int:
    """Terminal cells taken by `s`: the sum of `char_width` over its code points, which is how
    curses and per-character terminals place them (after `sanitize`, also the width of its
    grapheme clusters: nothing joins two code points into one glyph of another width)."""
    return sum(char_width(c) for c in s)


def _dropped(ch: str) -> bool:
    """True for what `sanitize` removes: invisible code points that terminals draw differently.

    - Format characters (Unicode category Cf). The soft hyphen U+00AD, frequent in scraped news
      (CNN/DM), is only a hint where a word may be hyphenated: the C library and wcwidth count it
      one cell (wcwidth 0.2.13 said 0), terminals draw a blank, a '-' or nothing, so a line
      holding some has no one width.
      Zero-width space/joiners, the byte order mark and word joiner are invisible; bidi controls
      (U+202A-202E, U+2066-2069) would reorder the characters on screen.
    - Variation selectors (U+FE00-FE0F, U+E0100-E01EF) and emoji skin-tone modifiers
      (U+1F3FB-1F3FF): terminals that join them with the character before draw the pair in another
      width than the sum of its code points ('❤' U+2764 + U+FE0F: 1 cell or 2).
    - Other code points of width 0 that are not marks (Hangul fillers U+3164 / U+FFA0: the C
      library counts U+3164 two cells; marks newer than Python's unicodedata, which the C library
      may call unprintable): a known mark combines with the character before it everywhere.
    Dropping them changes no word the reader sees (an emoji may lose its skin tone or colour
    presentation); the labels file keeps the exact text.
    """
    o, cat = ord(ch), unicodedata.category(ch)
    if cat == "Cf" or 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF or 0x1F3FB <= o <= 0x1F3FF:
        return True
    return wcwidth(ch) == 0 and not cat.startswith("M")


def sanitize(text: str) -> str:
    """Make model output safe to print and measurable: no escape sequences, tabs as spaces,
    line/paragraph separators as newlines, NFC, and no code point terminals disagree on.

    A sampled response can contain anything, including ESC [ ... which would drive the terminal;
    control characters are shown as their visible Unicode "control pictures" (ESC -> U+241B)
    instead. NFC composes what has a composed form ('e' + U+0301 -> 'é', Hangul jamo -> syllables):
    it looks the same, and one code point per cell is what every terminal draws alike. Invisible
    code points whose width terminals disagree on (soft hyphen, zero-width joiners, variation
    selectors; see `_dropped`) are removed, so that `text_width` is the width the terminal shows.
    """
    out = []
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\t", "    "))
    for c in text:
        o = ord(c)
        if c == "\n" or c in "\u2028\u2029":
            out.append("\n")
        elif o < 0x20:
            out.append(chr(0x2400 + o))
        elif o == 0x7F:
            out.append("\u2421")
        elif 0x80 <= o < 0xA0:
            out.append("\ufffd")
        elif not _dropped(c):
            out.append(c)
    return "".join(out)


def wrap(text: str, width: int, first: str = "", indent: int = 0) -> list[str]:
    """Word-wrap `text` to `width` terminal cells; `first` prefixes the first line, later lines are
    indented.

    Keeps explicit newlines, breaks words longer than a line, counts wide characters as 2 cells.
    Never returns an empty list, and never loops on tiny widths (each line holds at least one
    character).
    """
    width = max(1, width)
    # Too narrow for a hanging indent (a wide char needs 2 cells): the prefix gets its own
    # line(s), the text plain lines.
    if (first or indent) and (text_width(first) + 2 > width or indent + 2 > width):
        return (wrap(first.rstrip(), width) if first.strip() else []) + wrap(text, width)
    lines, pad = [], " " * indent
    for p_i, para in enumerate(sanitize(text).split("\n")):
        # Keep a paragraph's indent, leaving 2 cells after the prefix or hanging indent (one wide
        # character) so that every line holds some text.
        hang = max(indent, text_width(first)) if p_i == 0 else indent
        lead = " " * min(len(para) - len(para.lstrip(" ")), max(0, width - hang - 2))
        para = para.lstrip(" ")
        cur = (first if p_i == 0 else pad) + lead
        cur_w = base_w = text_width(cur)
        pad_p = pad + lead  # its continuation lines hang at the same indent
        for word in para.split(" "):
            w = text_width(word)
            sep = 1 if cur_w > base_w else 0
            if cur_w + sep + w <= width:
                cur, cur_w = cur + " " * sep + word, cur_w + sep + w
                continue
            if cur_w > base_w:  # the word moves to the next line
                lines.append(cur)
                cur, cur_w = pad_p, text_width(pad_p)
                base_w = cur_w
            while text_width(word) > width - cur_w:  # a word longer than a line: break it by cells
                room, k, used = width - cur_w, 0, 0
                while k < len(word) and used + char_width(word[k]) <= room:
                    used += char_width(word[k])
                    k += 1
                k = max(k, 1)  # only a width of 1 cell cannot hold a wide character
                lines.append(cur + word[:k])
                word, cur = word[k:], pad_p
                cur_w = base_w = text_width(pad_p)
            cur, cur_w = cur + word, cur_w + text_width(word)
        lines.append(cur)
    return lines


def clip(s: str, width: int) -> str:
    """The longest prefix of `s` that fits in `width` cells."""
    out, used = [], 0
    for c in s:
        w = char_width(c)
        if used + w > width:
            break
        out.append(c)
        used += w
    return "".join(out)


def fit(s: str, width: int) -> str:
    """`s` clipped to `width` cells and padded with spaces to exactly `width` cells (str.ljust
    counts code points, so a wide character would leave a status bar short)."""
    s = clip(s, width)
    return s + " " * (width - text_width(s))


def fmt_duration(seconds: float) -> str:
    """A duration as the status line shows it: '42s', '3m05s', '2h07m' (rounded to the second)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
