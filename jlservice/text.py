"""Text that came from outside (process names, JupyterLab's output, paths) made safe to show.

Kept light (stdlib `re` only): `jlservice status` imports it.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL (a terminal acts on ESC and CSI; systemd splits sd_notify
# messages at CR and LF), the Unicode line and paragraph separators, the bidirectional
# overrides that reorder what a terminal shows, and lone surrogates (undecodable bytes of a
# process name or file name, which cannot be encoded to UTF-8 at all).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte itself
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, keep: str = "") -> str:
    """`text` on one line and free of control characters: each is written as an escape
    (\\n, \\x1b, \\u2028, \\xff for an undecodable byte). `keep`: characters left as they
    are (a traceback's line breaks)."""
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)
    return _UNSAFE.sub(_escape, text)
