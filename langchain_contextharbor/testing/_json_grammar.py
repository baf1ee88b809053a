"""The JSON-grammar bounding of the llama.cpp engine: GBNF for an Ollama ``format``.

Apart from :mod:`.llama_engine` so the engine module stays about the engine; re-exported
from ``llama_engine`` where tests import it. Imports ``llama_cpp`` only when called.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Longest JSON string a ``format`` grammar lets the model write (see :func:`json_gbnf`).
MAX_STRING_CHARS = 200
#: Most members of one object / items of one array a ``format`` grammar lets it write.
MAX_ITEMS = 16

_MORE_ITEMS = re.compile(r'\(\s*"," (space|ws) ([^()"]+?)\s*\)\*')


def json_gbnf(fmt: str | dict[str, Any]) -> str:
    """GBNF for an Ollama ``format``: ``"json"`` (any object) or a JSON schema.

    llama-cpp-python's schema translation lets raw newlines and other control characters
    into strings (``json.loads`` refuses them), and neither grammar bounds anything, so a
    small model that starts a long string (or list) runs on to the end of the context and
    the output is cut mid-value. Both are repaired here: string characters are those JSON
    allows (as in llama.cpp's own translation), at most ``MAX_STRING_CHARS`` of them, and an
    object or array holds at most ``MAX_ITEMS`` entries (where the schema does not bound it).
    """
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    cap = f"{{0,{MAX_STRING_CHARS}}}"
    more = f"{{0,{MAX_ITEMS - 1}}}"
    if isinstance(fmt, dict):
        text = json_schema_to_gbnf(json.dumps(fmt))
        text = text.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')
        text = text.replace('"\\"" char* "\\""', '"\\"" char' + cap + ' "\\""')
    else:
        text = JSON_GBNF.replace(')* "\\"" ws', ")" + cap + ' "\\"" ws')
        text = text.replace('("," ws string ":" ws value)*', '("," ws string ":" ws value)' + more)
        text = text.replace('("," ws value)*', '("," ws value)' + more)
    return _MORE_ITEMS.sub(lambda m: f'("," {m.group(1)} {m.group(2)}){more}', text)
