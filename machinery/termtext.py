"""Text on a terminal: cell widths, sanitizing model output, word-wrapping and clipping by cells.

label_tool.py draws every line through these, so a sampled response can neither drive the terminal
(escape sequences) nor break the layout (wide CJK / emoji characters count as 2 cells, combining
marks as 0). Standard library only: label_tool.py must start without torch. The width of one code
point is decided in `char_width` alone, from Python's unicodedata tables.
"""

import unicodedata


def char_width(ch: str) -> int:
    """Terminal cells taken by one code point: 0 for combining marks / format chars, 2 for wide
    (CJK, emoji)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(s: str) -> int:
    """Terminal cells taken by `s`: the sum of `char_width` over its code points."""
    return sum(char_width(c) for c in s)


def sanitize(text: str) -> str:
    """Make model output safe to print: no escape sequences, tabs as spaces, line/paragraph
    separators as newlines.

    A sampled response can contain anything, including ESC [ ... which would drive the terminal;
    control characters are shown as their visible Unicode "control pictures" (ESC -> U+241B)
    instead.
    """
    out = []
    for c in text.replace("\r\n", "\n").replace("\t", "    "):
        o = ord(c)
        if c == "\n" or c in "\u2028\u2029":
            out.append("\n")
        elif o < 0x20:
            out.append(chr(0x2400 + o))
        elif o == 0x7F:
            out.append("\u2421")
        elif 0x80 <= o < 0xA0:
            out.append("\ufffd")
        else:
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
        # keep a paragraph's indent
        lead = " " * min(len(para) - len(para.lstrip(" ")), max(0, width - indent - 2))
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
                cur, cur_w = pad_p, len(pad_p)
                base_w = cur_w
            while text_width(word) > width - cur_w:  # a word longer than a line: break it by cells
                room, k, used = width - cur_w, 0, 0
                while k < len(word) and used + char_width(word[k]) <= room:
                    used += char_width(word[k])
                    k += 1
                k = max(k, 1)
                lines.append(cur + word[:k])
                word, cur = word[k:], pad_p
                cur_w = base_w = len(pad_p)
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


def fmt_duration(seconds: float) -> str:
    """A duration as the status line shows it: '42s', '3m05s', '2h07m' (rounded to the second)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
