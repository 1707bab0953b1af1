"""Musical controls (key, tempo, metre, instrument family): a value type and a parser that reads them from free text.

Pure Python, no model: the same parser runs in training (captions), in the runtime (prompts) and in the evaluation.
The parser never raises on arbitrary text; explicit values given by a caller are validated by ``resolve`` and raise
``InvalidInputError`` listing what is accepted.

Vocabulary (documented here, exported in every bundle's manifest):

- **key**: tonic ``C``..``B`` with ``#``/``♯``/``sharp`` or ``b``/``♭``/``flat`` (also ``-flat``, ``-sharp``), and a
  mode ``major``/``minor`` (``maj``/``min``, ``m`` after an upper-case tonic as in ``F#m``). A tonic with an
  accidental and no mode ("E-flat") is major; a bare letter counts only after "in" or "key of" ("in D"). "a minor key"
  alone gives the mode without a tonic. The first key mentioned wins.
- **tempo**: a number (20-400) with ``bpm``, ``BPM``, ``beats per minute``, ``tempo 72``, ``♩ = 100``, ``q = 100``;
  or a word mapped to a range (``TEMPO_WORDS``): largo, adagio, andante, moderato, allegro, presto and more, and
  English words (very slow, slow, moderate, lively, fast, brisk, ...). A number wins over a word.
- **metre**: a time signature from ``METRES`` ("3/4", "6/8", ...), or words: waltz, minuet, mazurka -> 3/4;
  jig -> 6/8; common time -> 4/4; cut time -> 2/2.
- **instrument**: a family from ``FAMILIES``, named by any of the instruments and synonyms in ``INSTRUMENTS``
  ("fiddle" = violin -> strings, "keys" = piano -> piano). The first instrument mentioned wins.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import asdict, dataclass, replace
from typing import Any

from melody_edge.errors import InvalidInputError

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_LETTER_PC = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_MAJOR_NAMES = ("C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B")
_MINOR_NAMES = ("C", "C-sharp", "D", "E-flat", "E", "F", "F-sharp", "G", "G-sharp", "A", "B-flat", "B")
MODES = ("major", "minor")

#: Time signatures the models know (anything else is refused when given explicitly and ignored in text).
METRES = ("2/2", "3/2", "4/2", "2/4", "3/4", "4/4", "5/4", "3/8", "6/8", "9/8", "12/8")
_METRE_WORDS = (("common time", "4/4"), ("cut time", "2/2"), ("alla breve", "2/2"), ("waltz", "3/4"),
                ("minuet", "3/4"), ("menuet", "3/4"), ("mazurka", "3/4"), ("triple time", "3/4"), ("jig", "6/8"),
                ("gigue", "6/8"), ("siciliana", "6/8"), ("barcarolle", "6/8"))

#: Instrument families: the classes the models are conditioned on.
FAMILIES = ("piano", "organ", "mallets", "plucked", "strings", "brass", "woodwinds", "saxophones", "voice")
#: Instrument names and synonyms -> family (longest name matched first).
INSTRUMENTS: dict[str, str] = {
    **dict.fromkeys(["piano", "pianos", "grand piano", "upright piano", "piano solo", "pianoforte", "keys",
                     "keyboard", "keyboards", "electric piano", "rhodes", "e-piano", "harpsichord", "clavichord",
                     "clavier", "fortepiano"], "piano"),
    **dict.fromkeys(["organ", "church organ", "pipe organ", "organs", "harmonium", "accordion"], "organ"),
    **dict.fromkeys(["vibraphone", "vibes", "marimba", "xylophone", "glockenspiel", "celesta", "mallets",
                     "mallet percussion"], "mallets"),
    **dict.fromkeys(["guitar", "guitars", "acoustic guitar", "classical guitar", "nylon guitar", "harp", "harps",
                     "lute", "mandolin", "banjo", "plucked strings"], "plucked"),
    **dict.fromkeys(["violin", "violins", "fiddle", "fiddles", "viola", "violas", "cello", "cellos", "violoncello",
                     "double bass", "contrabass", "strings", "string", "string ensemble", "string quartet",
                     "string orchestra", "string section", "string trio", "chamber strings"], "strings"),
    **dict.fromkeys(["trumpet", "trumpets", "trombone", "trombones", "tuba", "french horn", "horn", "horns",
                     "brass", "brass section", "brass ensemble", "brass band", "brass quartet", "cornet",
                     "flugelhorn", "euphonium"], "brass"),
    **dict.fromkeys(["flute", "flutes", "piccolo", "oboe", "oboes", "english horn", "cor anglais", "clarinet",
                     "clarinets", "bassoon", "bassoons", "recorder", "fife", "pan flute", "woodwinds", "woodwind",
                     "woodwind quartet", "woodwind ensemble", "winds", "wind quintet"], "woodwinds"),
    **dict.fromkeys(["saxophone", "saxophones", "sax", "saxes", "alto sax", "tenor sax", "soprano sax",
                     "baritone sax", "alto saxophone", "tenor saxophone", "soprano saxophone",
                     "baritone saxophone", "saxophone quartet", "sax quartet"], "saxophones"),
    **dict.fromkeys(["choir", "choirs", "chorus", "voices", "voice", "vocal", "vocals", "singers", "singing",
                     "a cappella", "choral"], "voice"),
    **{f: f for f in FAMILIES},
}

#: Tempo words -> (low, high) BPM; the control is the range's middle. Italian markings follow the bounds the
#: training captions use (training/data.py TEMPO_WORDS); longer phrases are matched first.
TEMPO_WORDS: dict[str, tuple[float, float]] = {
    "largo": (50, 60), "lento": (50, 62), "grave": (40, 55), "larghetto": (60, 66), "adagio": (66, 76),
    "adagietto": (70, 80), "andante": (76, 108), "andantino": (80, 108), "moderato": (108, 120),
    "allegretto": (112, 124), "allegro": (120, 168), "vivace": (156, 176), "presto": (168, 200),
    "prestissimo": (190, 220),
    "very slow": (45, 60), "extremely slow": (40, 55), "slow": (60, 76), "slowly": (60, 76), "calm": (60, 80),
    "moderately slow": (76, 108), "unhurried": (66, 84), "relaxed": (70, 90), "laid-back": (70, 90),
    "walking pace": (76, 108), "moderate": (108, 120), "medium tempo": (100, 120), "mid-tempo": (100, 120),
    "medium": (100, 120), "lively": (120, 150), "brisk": (120, 150), "upbeat": (120, 140), "quick": (130, 160),
    "fast": (140, 168), "rapid": (150, 180), "very fast": (168, 200), "energetic": (130, 160),
    "frantic": (180, 210),
}
BPM_LIMITS = (20.0, 400.0)  # what the parser reads from text
BPM_ACCEPTED = (30.0, 300.0)  # what an explicit bpm= may be (the models were trained on 50-180)


@dataclass(frozen=True)
class Controls:
    """What the model is conditioned on besides the text; every field is optional (``None`` = not given).

    Attributes:
        tonic: key tonic pitch class, 0 = C .. 11 = B.
        mode: ``"major"`` or ``"minor"``.
        bpm: tempo in quarter-note beats per minute.
        metre: a time signature from ``METRES``.
        instrument: an instrument family from ``FAMILIES``.
    """

    tonic: int | None = None
    mode: str | None = None
    bpm: float | None = None
    metre: str | None = None
    instrument: str | None = None

    @property
    def key(self) -> str | None:
        """The key spelled as in the training captions ("B-flat minor"), or the mode alone, or ``None``."""
        if self.tonic is None:
            return f"{self.mode} key" if self.mode else None
        mode = self.mode or "major"
        return f"{(_MINOR_NAMES if mode == 'minor' else _MAJOR_NAMES)[self.tonic]} {mode}"

    @property
    def key_index(self) -> int | None:
        """0..23 (``tonic`` for major, ``12 + tonic`` for minor) when tonic and mode are known."""
        if self.tonic is None or self.mode is None:
            return None
        return self.tonic + (12 if self.mode == "minor" else 0)

    def merge(self, other: Controls) -> Controls:
        """These controls with every field that ``other`` sets replaced by ``other``'s value."""
        given = {k: v for k, v in asdict(other).items() if v is not None}
        if "tonic" in given and "mode" not in given:
            given["mode"] = other.mode or "major"
        return replace(self, **given)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), with the spelled key."""
        return {**asdict(self), "key": self.key}

    def __str__(self) -> str:
        parts = [self.key, None if self.bpm is None else f"{self.bpm:g} BPM", self.metre, self.instrument]
        return ", ".join(p for p in parts if p) or "no controls"


# --- parsing ---------------------------------------------------------------------------------------------------

_ACC = (r"(?P<acc>\s*(?:#|♯|b(?![a-ln-z])(?!m[a-z])|♭)|[\s-]*(?:sharp|flat)(?![a-ln-z])(?!m[a-z])"
        r"|is(?=[\s-]*moll|[\s-]*dur))?")
_KEY_RE = re.compile(
    r"(?P<pre>\bkey\s+of\s+|\bin\s+(?:the\s+key\s+of\s+)?)?"
    r"(?<![\w'’-])(?P<tonic>[A-Ga-g])" + _ACC +
    r"(?P<mode>[\s-]*(?:major|minor|maj|min|dur|moll)(?![a-z])|m(?![\w'’]))?",
    re.IGNORECASE)
_MODE_ONLY_RE = re.compile(r"\b(major|minor)[\s-]+(?:key|mode|tonality)\b", re.IGNORECASE)
_BPM_RES = (
    re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)\s*-?\s*(?:bpm|b\.p\.m\.?|beats?\s*(?:per|a|/)\s*min(?:ute)?s?)\b",
               re.IGNORECASE),
    re.compile(r"\bbpm\s*[:=]?\s*(\d{1,3}(?:\.\d+)?)(?![\d/])", re.IGNORECASE),
    re.compile(r"\btempo\s*(?:of|at|=|:|is)?\s*(\d{1,3}(?:\.\d+)?)(?![\d/])", re.IGNORECASE),
    re.compile(r"(?:♩|𝅘𝅥|\bq|\bquarter(?:[\s-]*note)?|\bmm|\bm\.m\.)\s*=\s*(\d{1,3}(?:\.\d+)?)", re.IGNORECASE),
)
_METRE_RE = re.compile(r"(?<![\d/.])(\d{1,2})\s*/\s*(\d{1,2})(?![\d/.])")


def _words_re(words: Any) -> re.Pattern[str]:
    alts = sorted(words, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(w).replace(r"\ ", r"[\s-]+") for w in alts) + r")(?![\w-])",
                      re.IGNORECASE)


_TEMPO_WORD_RE = _words_re(TEMPO_WORDS)
_INSTRUMENT_RE = _words_re(INSTRUMENTS)
_METRE_WORD_RE = _words_re(dict(_METRE_WORDS))


def _normalise(text: str) -> str:
    # NFKC folds full-width letters and digits; lone surrogates and other unencodable code points are dropped
    text = text.encode("utf-8", "ignore").decode("utf-8") if isinstance(text, str) else ""
    return unicodedata.normalize("NFKC", text).replace("♯", "#").replace("♭", "b").replace("–", "-")


def _tonic_pc(letter: str, acc: str) -> int:
    pc = _LETTER_PC[letter.lower()]
    a = acc.strip(" -").lower()
    if a in ("#", "sharp", "is"):
        pc += 1
    elif a in ("b", "flat"):
        pc -= 1
    return pc % 12


def _parse_key(text: str) -> tuple[int | None, str | None]:
    for m in _KEY_RE.finditer(text):
        letter, acc, mode_s, pre = m.group("tonic"), m.group("acc") or "", m.group("mode") or "", m.group("pre")
        mode_w = mode_s.strip(" -").lower()
        if mode_w == "m":
            if not (letter.isupper() or acc.strip()):
                continue  # "am", "em": words, not chords
            mode = "minor"
        elif mode_w:
            mode = "minor" if mode_w in ("minor", "min", "moll") else "major"
        elif acc.strip():
            if acc.strip().lower() == "b" and not (letter.isupper() or pre):
                continue  # "eb" inside text without context is too weak a signal
            mode = "major"
        elif pre and letter.isupper():
            mode = "major"
        else:
            continue
        key_word = re.match(r"[\s-]*(?:key|mode|tonality)\b", text[m.end():], re.I)
        if letter == "a" and not acc.strip() and ((not pre and mode_w not in ("minor", "major")) or key_word):
            continue  # "a min...", "a minor key" in lower case read as the article
        return _tonic_pc(letter, acc), mode
    m = _MODE_ONLY_RE.search(text)
    return (None, m.group(1).lower()) if m else (None, None)


_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
_NUMBER_WORDS_RE = re.compile(
    r"\b((?:(?:one|a)\s+hundred(?:\s+and)?[\s-]*)?(?:(?:" + "|".join(_TENS) + r")(?:[\s-]+(?:" +
    "|".join(list(_UNITS)[1:10]) + r"))?|" + "|".join(_UNITS) + r")?)\s*-?\s*(?:bpm|beats?\s+(?:per|a)\s+minute)\b",
    re.IGNORECASE)


def _words_to_number(words: str) -> int | None:
    total = 0
    words, hundreds = re.subn(r"^\s*(?:one|a)\s+hundred(?:\s+and)?", "", words.lower())
    total += 100 * hundreds
    for w in re.split(r"[\s-]+", words):
        if w in ("hundred",):
            total += 100
        elif w in _TENS:
            total += _TENS[w]
        elif w in _UNITS:
            total += _UNITS[w]
        elif w not in ("a", "one", "and", ""):
            return None
    return total or None


def _parse_bpm(text: str) -> float | None:
    for m in _NUMBER_WORDS_RE.finditer(text):
        value = _words_to_number(m.group(1)) if m.group(1).strip() else None
        if value is not None and BPM_LIMITS[0] <= value <= BPM_LIMITS[1]:
            return float(value)
    for pattern in _BPM_RES:
        for m in pattern.finditer(text):
            value = float(m.group(1))
            if BPM_LIMITS[0] <= value <= BPM_LIMITS[1]:
                return value
    m = _TEMPO_WORD_RE.search(text)
    if m:
        lo, hi = TEMPO_WORDS[re.sub(r"[\s-]+", " ", m.group(1).lower()).replace("laid back", "laid-back")
                             .replace("mid tempo", "mid-tempo")]
        return (lo + hi) / 2
    return None


def _parse_metre(text: str) -> str | None:
    for m in _METRE_RE.finditer(text):
        sig = f"{int(m.group(1))}/{int(m.group(2))}"
        if sig in METRES:
            return sig
    m = _METRE_WORD_RE.search(text)
    return dict(_METRE_WORDS)[re.sub(r"[\s-]+", " ", m.group(1).lower())] if m else None


def _parse_instrument(text: str) -> str | None:
    m = _INSTRUMENT_RE.search(text)
    return INSTRUMENTS[re.sub(r"[\s-]+", " ", m.group(1).lower()).replace("e piano", "e-piano")] if m else None


def parse_controls(text: Any) -> Controls:
    """Read the controls a free-text prompt states (see the module docstring); never raises.

    >>> parse_controls("sad piano in b flat minor at 60 bpm")
    Controls(tonic=10, mode='minor', bpm=60.0, metre=None, instrument='piano')
    """
    if not isinstance(text, str):
        return Controls()
    try:
        t = _normalise(text)[:10_000]
        tonic, mode = _parse_key(t)
        return Controls(tonic=tonic, mode=mode, bpm=_parse_bpm(t), metre=_parse_metre(t),
                        instrument=_parse_instrument(t))
    except (RecursionError, MemoryError, ValueError, KeyError):  # defensive: arbitrary text must never raise
        return Controls()


# --- explicit values --------------------------------------------------------------------------------------------

def _explicit_key(key: Any) -> tuple[int, str]:
    hint = ('a key such as "A minor", "Bb major", "F# minor", "C sharp minor", "E-flat" (tonic A-G with #/b/sharp/'
            'flat, mode major/minor)')
    if not isinstance(key, str):
        raise InvalidInputError(f"key must be a string, {hint}; got {type(key).__name__}")
    t = _normalise(key).strip()
    m = re.fullmatch(r"(?:key\s+of\s+)?([A-Ga-g])" + _ACC.replace("?P<acc>", "?P<acc>") +
                     r"([\s-]*(?:major|minor|maj|min)|m)?(?:\s+key)?", t, re.IGNORECASE)
    if not m:
        raise InvalidInputError(f"key {key!r} is not understood; give {hint}")
    mode_w = (m.group(3) or "").strip(" -").lower()
    mode = "minor" if mode_w in ("minor", "min", "m") else "major"
    return _tonic_pc(m.group(1), m.group("acc") or ""), mode


def _explicit_bpm(bpm: Any) -> float:
    if isinstance(bpm, bool) or not isinstance(bpm, (int, float)) and not hasattr(bpm, "__float__"):
        raise InvalidInputError(f"bpm must be a number in [{BPM_ACCEPTED[0]:g}, {BPM_ACCEPTED[1]:g}], "
                                f"got {type(bpm).__name__}")
    value = float(bpm)
    if not math.isfinite(value) or not BPM_ACCEPTED[0] <= value <= BPM_ACCEPTED[1]:
        raise InvalidInputError(f"bpm must be in [{BPM_ACCEPTED[0]:g}, {BPM_ACCEPTED[1]:g}] beats per minute, "
                                f"got {bpm!r}")
    return value


def _explicit_metre(metre: Any) -> str:
    if isinstance(metre, str):
        sig = re.sub(r"\s+", "", _normalise(metre))
        m = re.fullmatch(r"(\d{1,2})/(\d{1,2})", sig)
        if m and f"{int(m.group(1))}/{int(m.group(2))}" in METRES:
            return f"{int(m.group(1))}/{int(m.group(2))}"
    raise InvalidInputError(f"metre {metre!r} is not supported; choose one of {', '.join(METRES)}")


def _explicit_instrument(instrument: Any) -> str:
    if isinstance(instrument, str):
        name = re.sub(r"[\s-]+", " ", _normalise(instrument).strip().lower())
        for candidate in (name, name.replace("e piano", "e-piano")):
            if candidate in INSTRUMENTS:
                return INSTRUMENTS[candidate]
    raise InvalidInputError(f"instrument {instrument!r} is not known; choose a family ({', '.join(FAMILIES)}) "
                            "or an instrument such as piano, violin, fiddle, cello, flute, trumpet, choir, organ, "
                            "guitar, harp, marimba, saxophone (see melody_edge.controls.INSTRUMENTS)")


def resolve(prompt: Any, *, key: Any = None, bpm: Any = None, metre: Any = None, instrument: Any = None) -> Controls:
    """The controls for a prompt: what the text says, overridden by each explicit value that is not ``None``.

    Raises:
        InvalidInputError: an explicit value is not accepted (the message lists what is).
    """
    explicit = Controls()
    if key is not None:
        tonic, mode = _explicit_key(key)
        explicit = replace(explicit, tonic=tonic, mode=mode)
    if bpm is not None:
        explicit = replace(explicit, bpm=_explicit_bpm(bpm))
    if metre is not None:
        explicit = replace(explicit, metre=_explicit_metre(metre))
    if instrument is not None:
        explicit = replace(explicit, instrument=_explicit_instrument(instrument))
    return parse_controls(prompt).merge(explicit)


def key_name(tonic: int, mode: str) -> str:
    """Spell a key as the training captions do ("B-flat minor")."""
    return Controls(tonic=tonic % 12, mode=mode).key or ""


def vocabulary() -> dict[str, Any]:
    """The control vocabulary, as recorded in bundle manifests."""
    return {"modes": list(MODES), "pitch_classes": list(PITCH_CLASSES), "metres": list(METRES),
            "families": list(FAMILIES), "bpm_accepted": list(BPM_ACCEPTED)}


# --- model inputs -------------------------------------------------------------------------------------------------

def control_ids(controls: Controls, *, key_rotation: bool) -> dict[str, Any]:
    """The conditioning inputs of one ``Controls`` (an absent control is its class count, bpm 0):
    ``{"key": int, "bpm": float, "metre": int, "family": int}``. With ``key_rotation`` the key input is the mode
    (0 major, 1 minor; 2 absent), since the tonic is set by rotating the tokens; otherwise 0..23 (24 absent)."""
    if key_rotation:
        key = MODES.index(controls.mode) if controls.mode in MODES else len(MODES)
    else:
        key = controls.key_index if controls.key_index is not None else 24
    return {"key": key, "bpm": float(controls.bpm or 0.0),
            "metre": METRES.index(controls.metre) if controls.metre in METRES else len(METRES),
            "family": FAMILIES.index(controls.instrument) if controls.instrument in FAMILIES else len(FAMILIES)}


def beat_features(n: int, start: float, bpm: float | None, harmonics: int = 2, token_rate: float = 25.0):
    """Beat-phase features of ``n`` consecutive tokens, the first at token index ``start`` (tokens since the beat
    grid's origin, a float): (n, 2 * harmonics) float32, ``[sin 2 pi k phi, cos 2 pi k phi]`` for k = 1..harmonics,
    where phi is the token start's position in quarter-note beats; all zeros when ``bpm`` is not given."""
    import numpy as np

    out = np.zeros((max(0, n), 2 * harmonics), dtype=np.float32)
    if not bpm or n <= 0:
        return out
    phase = (start + np.arange(n)) / token_rate * (float(bpm) / 60.0)
    for k in range(harmonics):
        a = 2.0 * np.pi * (k + 1) * phase
        out[:, 2 * k], out[:, 2 * k + 1] = np.sin(a), np.cos(a)
    return out


#: Krumhansl-Kessler key profiles (C major, C minor), for estimating the key of chroma.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


# Published key profiles (major, minor; tonic first) besides Krumhansl-Kessler, as music21 lists them. The runtime's
# key alignment and key drafts score by these three at once (the mean correlation), so that what they choose is in
# the asked key by a consensus of corpus-derived profiles; Krumhansl-Kessler (``KK_*``, ``estimate_key``) is left out
# so that the evaluation's estimator (``training.evaluate``: Krumhansl-Kessler on CQT chroma) is not the selector.
# Measured on 75 free-form prompts (seed 0, `training/results/key_profiles.md`): choosing by Krumhansl-Kessler alone
# raised the Krumhansl-Kessler score 16% -> 68% but Aarden-Essen only 37% -> 47% and Bellman-Budge 32% -> 47%; by
# these three, Krumhansl-Kessler (held out) 16% -> 40% and the three 57-63%.
KEY_PROFILES = {
    "aarden-essen": ((17.7661, 0.1456, 14.9265, 0.1602, 19.8049, 11.3587, 0.2912, 22.062, 0.1456, 8.1549, 0.233,
                      4.9512),
                     (18.2648, 0.7376, 14.0499, 16.8599, 0.7025, 14.4362, 0.7025, 18.6161, 4.5662, 1.9319, 7.3762,
                      1.7562)),
    "temperley-kostka-payne": ((0.748, 0.06, 0.488, 0.082, 0.67, 0.46, 0.096, 0.715, 0.104, 0.366, 0.057, 0.4),
                               (0.712, 0.084, 0.474, 0.618, 0.049, 0.46, 0.105, 0.747, 0.404, 0.067, 0.133, 0.33)),
    "bellman-budge": ((16.8, 0.86, 12.95, 1.41, 13.49, 11.93, 1.25, 20.28, 1.8, 8.04, 0.62, 10.57),
                      (18.16, 0.69, 12.99, 13.34, 1.07, 11.15, 1.38, 21.07, 7.49, 1.53, 0.92, 10.21)),
}


def _best_tonic(chroma, mode: str | None) -> tuple[float, int]:
    """(score, tonic) of the key of ``mode`` (both modes if None) that best fits ``chroma``: the score is the mean
    correlation with the four ``KEY_PROFILES`` of that key; (-2.0, 0) for a flat chroma (no correlation)."""
    import numpy as np

    c = np.asarray(chroma, dtype=np.float64).reshape(12)
    c = c - c.mean()
    norm = float(np.linalg.norm(c))
    if norm == 0.0 or not np.isfinite(norm):
        return (-2.0, 0)
    c /= norm
    best = (-2.0, 0)
    for i, m in enumerate(("major", "minor")):
        if mode is not None and m != mode:
            continue
        score = np.zeros(12)
        for profiles in KEY_PROFILES.values():
            p = np.asarray(profiles[i], np.float64)
            p = (p - p.mean()) / np.linalg.norm(p - p.mean())
            rolled = np.stack([np.roll(p, t) for t in range(12)])  # (12 tonics, 12 pitch classes)
            score += rolled @ c / len(KEY_PROFILES)  # Pearson correlation with each tonic's profile
        t = int(np.argmax(score))
        if score[t] > best[0]:
            best = (float(score[t]), t)
    return best


def key_rotation(chroma, tonic: int, mode: str | None) -> int:
    """The transposition ``r`` (semitones up, 0-11) that puts music of mean chroma ``chroma`` (12 bins, C first) in
    the key (``tonic``, ``mode``): ``chroma`` rolled by ``r`` fits that key's profiles best (``KEY_PROFILES``).
    That is ``tonic - t``, ``t`` being the tonic the profile of ``mode`` finds in ``chroma`` (with ``mode`` None, the
    better of the two modes). Music whose chroma is flat (or all zeros) gets ``tonic``, the rotation from C."""
    return (tonic - _best_tonic(chroma, mode)[1]) % 12


def key_fit(chroma, mode: str | None) -> float:
    """How well music of mean chroma ``chroma`` can be put in a key of ``mode`` by transposition: the correlation
    with the best-fitting key of that mode (mean over ``KEY_PROFILES``), -1..1 (-2 for a flat chroma). Transposing by
    ``key_rotation`` then reaches exactly this fit in any asked tonic."""
    return _best_tonic(chroma, mode)[0]


#: The notes of each mode's scale (semitones above the tonic): major, and minor with both sevenths (natural and
#: harmonic). ``key_token_bias`` scores a token by its fit to these, so every chord of the key (I, IV, V, ii...) is as
#: welcome as the tonic's: the harmony keeps moving inside the key.
KEY_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10, 11)}


def key_token_bias(chroma, tonic: int, mode: str | None):
    """How well each semantic token's pitch content sits in the key's scale (``tonic``, ``mode``; None = major):
    for each row of ``chroma`` (V tokens x 12 pitch classes, C first) its Pearson correlation with the scale's
    membership (1 on the notes of ``KEY_SCALES``, 0 off them); (V,) float32 in -1..1, 0 for a token of flat chroma
    (a drum hit, silence). The generator adds ``key_strength`` times this to the LM's logits, within each base code's
    transpositions (``Generator.generate``, ``sampling.guide_within_groups``): a soft pull of every sampled token
    into the key, which the draft choice and key alignment (by the whole window's chroma) cannot give.

    A scale, not a key profile: measured against the three ``KEY_PROFILES`` (which weight the tonic triad), the
    profiles pulled the music onto the tonic chord and made it static (the clips' MFCC spread over time fell and the
    Frechet distance rose 32.4 -> 35.7 at strength 4, 3 seeds), the scale 31.9 -> 32.9 at strength 12 (5 seeds)
    (``MODEL_CARD.md``, "This version: key guidance")."""
    import numpy as np

    c = np.asarray(chroma, dtype=np.float64).reshape(-1, 12)
    c = c - c.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    c = np.divide(c, norm, out=np.zeros_like(c), where=norm > 1e-12)
    p = np.zeros(12)
    p[list(KEY_SCALES["minor" if mode == "minor" else "major"])] = 1.0
    p = np.roll((p - p.mean()) / np.linalg.norm(p - p.mean()), int(tonic) % 12)
    return (c @ p).astype(np.float32)


def estimate_key(chroma) -> tuple[int, str]:
    """Key (tonic, mode) of a 12-bin chroma profile by correlation with the Krumhansl-Kessler profiles."""
    import numpy as np

    c = np.asarray(chroma, dtype=np.float64).reshape(12)
    best = (-2.0, 0, "major")
    for mode, profile in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        for tonic in range(12):
            r = np.corrcoef(c, np.roll(profile, tonic))[0, 1]
            if np.isfinite(r) and r > best[0]:
                best = (r, tonic, mode)
    return best[1], best[2]
