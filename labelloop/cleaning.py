"""Text cleaning: one definition, applied wherever a text meets a model or a person.

`Cleaning` is built from `dataset.cleaning` when training and recorded in the model bundle
(`labelloop.json`, key `cleaning`); the service, evaluation and the annotation tools rebuild it
from the bundle (`Cleaning.from_meta`), so a request is cleaned exactly as the training rows
were. A bundle without the key (older models) gets no cleaning at all, as before.

It is a plain function over texts (and pandas Series), so every task family can use it on any
text column (classification texts, generation prompts and responses). It is idempotent:
cleaning an already cleaned text changes nothing, which is what lets the evaluation (and the
service) clean texts that training already cleaned.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

import pandas as pd

_SPACES = re.compile(r"\s+")
# A link: a scheme or www. up to the next space (social-media text: t.co short links), less
# the punctuation or closing quote that ends the sentence around it ("see http://x.io/a").
_URL = re.compile(r"(?i)\b(?:https?://|www\.)\S+?(?=[\"'\u201d\u2019\u00bb)\]}>.,;:!?]*(?:\s|$))")
# A user handle: @ and a word not glued to a preceding word character (an e-mail keeps its @).
_MENTION = re.compile(r"(?<![\w@])@\w+")
# What `token` puts in place of each: a real word for the tokenizer, plain to annotators.
URL_TOKEN = "URL"
MENTION_TOKEN = "@user"
# Wrapping quote pairs: straight, typographic and guillemets.
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb",
           "\u201e": "\u201c"}
# Cleaning repeats until nothing changes (idempotence): `&amp;amp;` needs two passes, `""x""`
# two strips. A handful of passes covers any real text; the bound keeps it cheap.
_MAX_PASSES = 4


def _wrapped(text: str) -> bool:
    """Quotes around the whole text: a matching pair at the ends and no quote of that kind
    inside (`"left" and "right"` is two quotes, not one wrapped text), or a wrapped inside."""
    if len(text) < 2 or _QUOTES.get(text[0]) != text[-1]:
        return False
    inner = text[1:-1]
    return (text[0] not in inner and text[-1] not in inner) or _wrapped(inner)


@dataclass(frozen=True)
class Cleaning:
    html_entities: bool = False
    strip_quotes: bool = False
    whitespace: str = "keep"  # keep | strip | collapse
    unicode_form: Optional[str] = None  # NFC | NFKC | NFD | NFKD
    urls: str = "keep"  # keep | token (each link becomes URL) | remove
    mentions: str = "keep"  # keep | token (each @handle becomes @user)

    @classmethod
    def from_settings(cls, settings: Any) -> "Cleaning":
        """From a CleaningSettings (or anything with its fields)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @classmethod
    def from_meta(cls, meta: Optional[Mapping[str, Any]]) -> "Cleaning":
        """From a bundle's recorded `cleaning`; none recorded means none applied."""
        if not meta:
            return cls()
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        return self == Cleaning()

    def _once(self, text: str) -> str:
        if self.html_entities and "&" in text:
            text = html.unescape(text)
        if self.unicode_form and not text.isascii():
            text = unicodedata.normalize(self.unicode_form, text)
        if self.urls != "keep":
            text = _URL.sub(URL_TOKEN if self.urls == "token" else "", text)
        if self.mentions == "token" and "@" in text:
            text = _MENTION.sub(MENTION_TOKEN, text)
        if self.whitespace == "collapse":
            text = _SPACES.sub(" ", text).strip()
        elif self.whitespace == "strip" or self.strip_quotes:
            text = text.strip()
        if self.strip_quotes and _wrapped(text):
            text = text[1:-1]
            text = _SPACES.sub(" ", text).strip() if self.whitespace == "collapse" else text.strip()
        return text

    def __call__(self, text: str) -> str:
        """The cleaned text (a str in, a str out)."""
        if self.is_identity:
            return text
        for _ in range(_MAX_PASSES):
            cleaned = self._once(text)
            if cleaned == text:
                break
            text = cleaned
        return text

    def texts(self, texts):
        """A list of texts, cleaned."""
        return list(texts) if self.is_identity else [self(t) for t in texts]

    def series(self, values: pd.Series) -> pd.Series:
        """A Series of strings, cleaned (non-strings are left for the caller to judge)."""
        if self.is_identity:
            return values
        return values.map(lambda v: self(v) if isinstance(v, str) else v)

    def describe(self) -> str:
        bits = []
        if self.html_entities:
            bits.append("HTML entities decoded")
        if self.strip_quotes:
            bits.append("wrapping quotes removed")
        if self.whitespace != "keep":
            bits.append(f"whitespace {'collapsed' if self.whitespace == 'collapse' else 'stripped'}")
        if self.unicode_form:
            bits.append(f"Unicode {self.unicode_form}")
        if self.urls != "keep":
            bits.append(f"links {'as ' + URL_TOKEN if self.urls == 'token' else 'removed'}")
        if self.mentions == "token":
            bits.append(f"@handles as {MENTION_TOKEN}")
        return ", ".join(bits) or "none"
