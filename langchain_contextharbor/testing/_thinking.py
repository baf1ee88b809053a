"""Ollama's generic thinking parser, for the llama.cpp engine.

Apart from :mod:`.llama_engine` so the engine module stays about the engine; the parser is
pure text in, text out, and is re-exported from ``llama_engine`` where tests import it.
"""

from __future__ import annotations


class ThinkingParser:
    """Ollama's generic thinking parser (``thinking/parser.go``), ported as is.

    Fed the raw generated text piece by piece, :meth:`add` returns ``(thinking, content)``
    that can be sent now: leading whitespace before the opening tag, and between each tag and
    what follows it, is eaten; text that may be the start of a tag is held back until it is
    decided. Output that does not open with the tag is all content (the model skipped
    thinking). A prompt that already ends in the opening tag (a template that pre-fills it)
    starts the parser with ``add(opening)``, as Ollama does.
    """

    _LOOKING, _STARTED, _THINKING, _DONE_EATING, _DONE = range(5)

    def __init__(self, opening: str = "<think>", closing: str = "</think>") -> None:
        self.opening = opening
        self.closing = closing
        self.state = self._LOOKING
        self._acc = ""

    @property
    def thinking_done(self) -> bool:
        """Whether the closing tag (or content without any thinking) has been seen."""
        return self.state in (self._DONE_EATING, self._DONE)

    def add(self, text: str) -> tuple[str, str]:
        """Take ``text``; return the thinking and the content now decided."""
        self._acc += text
        thinking: list[str] = []
        content: list[str] = []
        more = True
        while more:
            t, c, more = self._eat()
            thinking.append(t)
            content.append(c)
        return "".join(thinking), "".join(content)

    def flush(self) -> tuple[str, str]:
        """At the end of generation: whatever is still held back, as what it was heading for."""
        rest, self._acc = self._acc, ""
        if self.state in (self._STARTED, self._THINKING):
            return rest, ""
        if self.state == self._LOOKING:
            return "", rest
        return "", rest.lstrip() if self.state == self._DONE_EATING else rest

    def _eat(self) -> tuple[str, str, bool]:
        acc = self._acc
        if self.state == self._LOOKING:
            trimmed = acc.lstrip()
            if trimmed.startswith(self.opening):
                after = trimmed[len(self.opening) :].lstrip()
                self._acc = after
                self.state = self._THINKING if after else self._STARTED
                return "", "", True
            if self.opening.startswith(trimmed):  # a partial tag, or only whitespace
                return "", "", False
            self.state, self._acc = self._DONE, ""
            return "", acc, False
        if self.state == self._STARTED:
            trimmed = acc.lstrip()
            self._acc = trimmed
            if not trimmed:
                return "", "", False
            self.state = self._THINKING
            return "", "", True
        if self.state == self._THINKING:
            if self.closing in acc:
                thinking, _, remaining = acc.partition(self.closing)
                remaining = remaining.lstrip()
                self._acc = ""
                self.state = self._DONE if remaining else self._DONE_EATING
                return thinking, remaining, False
            hold = _overlap(acc, self.closing)
            self._acc = acc[len(acc) - hold :] if hold else ""
            return acc[: len(acc) - hold], "", False
        if self.state == self._DONE_EATING:
            trimmed = acc.lstrip()
            self._acc = ""
            if trimmed:
                self.state = self._DONE
            return "", trimmed, False
        self._acc = ""
        return "", acc, False


def _overlap(text: str, delim: str) -> int:
    """Length of the longest suffix of ``text`` that is a prefix of ``delim``."""
    for i in range(min(len(delim), len(text)), 0, -1):
        if text.endswith(delim[:i]):
            return i
    return 0
