"""Captions and controls of a rendered clip, from its metadata (``training/data.py``).

``controls_of(meta)`` gives the exact ``Controls`` a clip was rendered with. ``make_captions(meta, rng, n)`` writes
``n`` captions in varied phrasings: every common spelling of the key ("B-flat minor", "Bb minor", "b♭ minor",
"B flat min", "Bbm"), the tempo as a number ("96 bpm", "tempo 96", "♩ = 96", "96 beats per minute") or as a word
(Italian or English), the metre or a dance word, instrument synonyms, and each attribute left out at random so
that the text path also learns prompts that say only some things. The evaluation's free-form prompts
(``training/prompts_freeform.jsonl``) are written independently of these templates.
"""

from __future__ import annotations

import random
from typing import Any

from melody_edge.controls import FAMILIES, METRES, TEMPO_WORDS, Controls

#: GM programs and ensembles of the renders -> instrument family (None: a mixed ensemble, no single family).
PROGRAM_FAMILY = {0: "piano", 4: "piano", 6: "piano", 11: "mallets", 12: "mallets", 19: "organ", 24: "plucked",
                  46: "plucked", 40: "strings", 41: "strings", 42: "strings", 48: "strings", 52: "voice",
                  56: "brass", 57: "brass", 58: "brass", 60: "brass", 61: "brass", 64: "saxophones",
                  65: "saxophones", 66: "saxophones", 67: "saxophones", 68: "woodwinds", 70: "woodwinds",
                  71: "woodwinds", 73: "woodwinds"}
ENSEMBLE_FAMILY = {"strings": "strings", "woodwinds": "woodwinds", "brass": "brass", "saxophones": "saxophones",
                   "mixed chamber ensemble": None}
_SYNONYMS = {"piano": ["piano", "solo piano", "grand piano", "keys", "pianoforte"],
             "electric piano": ["electric piano", "rhodes", "e-piano", "keys"],
             "harpsichord": ["harpsichord", "clavier"], "vibraphone": ["vibraphone", "vibes"],
             "marimba": ["marimba"], "church organ": ["church organ", "organ", "pipe organ"],
             "acoustic guitar": ["acoustic guitar", "guitar", "classical guitar"], "violin": ["violin", "fiddle"],
             "cello": ["cello", "violoncello"], "harp": ["harp"],
             "string ensemble": ["string ensemble", "strings", "string orchestra", "string section"],
             "choir": ["choir", "chorus", "voices", "vocal ensemble"], "trumpet": ["trumpet"],
             "brass section": ["brass section", "brass", "brass ensemble"], "oboe": ["oboe"],
             "clarinet": ["clarinet"], "flute": ["flute"]}
_ENSEMBLE_WORDS = {"strings": ["string quartet", "strings", "string ensemble"],
                   "woodwinds": ["woodwind quartet", "woodwinds", "wind ensemble"],
                   "brass": ["brass quartet", "brass", "brass ensemble"],
                   "saxophones": ["saxophone quartet", "saxophones", "sax quartet"],
                   "mixed chamber ensemble": ["mixed chamber ensemble", "chamber ensemble"]}
_SHARP = {0: "C", 1: "C#", 2: "D", 3: "D#", 4: "E", 5: "F", 6: "F#", 7: "G", 8: "G#", 9: "A", 10: "A#", 11: "B"}
_FLAT = {0: "C", 1: "Db", 2: "D", 3: "Eb", 4: "E", 5: "F", 6: "Gb", 7: "G", 8: "Ab", 9: "A", 10: "Bb", 11: "B"}
_TEMPO_NAMES = {name: rng for name, rng in TEMPO_WORDS.items()}


def family_of(meta: dict[str, Any]) -> str | None:
    """The instrument family of a rendered clip (None for a mixed ensemble)."""
    if meta.get("ensemble"):
        return ENSEMBLE_FAMILY.get(meta["ensemble"])
    fams = {PROGRAM_FAMILY.get(p) for p in meta.get("programs", [])}
    return fams.pop() if len(fams) == 1 else None


def controls_of(meta: dict[str, Any]) -> Controls:
    """The exact controls a clip was rendered with (metre None when it is not in the vocabulary)."""
    metre = meta.get("meter")
    return Controls(tonic=int(meta["tonic_pc"]) % 12, mode=meta["mode"], bpm=float(meta["bpm"]),
                    metre=metre if metre in METRES else None, instrument=family_of(meta))


def _key_text(c: Controls, rng: random.Random) -> str:
    letter = (_FLAT if rng.random() < 0.5 else _SHARP)[c.tonic]
    if c.tonic in (0, 2, 4, 5, 7, 9, 11):
        letter = _SHARP[c.tonic]
    base = letter[0]
    acc = letter[1:]
    mode = c.mode or "major"
    style = rng.randrange(7)
    if style == 0:
        return c.key  # "B-flat minor", as the old captions
    spelled_acc = {"#": rng.choice(["#", "♯", " sharp", "-sharp"]), "b": rng.choice(["b", "♭", " flat", "-flat"]),
                   "": ""}[acc]
    tonic = (base if rng.random() < 0.8 else base.lower()) + spelled_acc
    if style == 1:
        return f"{tonic} {mode}"
    if style == 2:
        return f"{tonic} {mode[:3]}"
    if style == 3:
        return f"{base}{acc}m" if mode == "minor" else f"{tonic} major"
    if style == 4:
        return f"the key of {tonic} {mode}"
    if style == 5:
        return f"{tonic} {mode}".lower() if acc != "#" else f"{tonic} {mode}"
    return f"{tonic} {mode}" if mode == "minor" or acc == "" else f"{tonic}"  # "E-flat" alone = major


def _tempo_text(bpm: float, rng: random.Random) -> str:
    b = round(bpm)
    style = rng.randrange(8)
    if style == 0:
        return f"{b} BPM"
    if style == 1:
        return f"{b} bpm"
    if style == 2:
        return f"tempo {b}"
    if style == 3:
        return f"♩ = {b}"
    if style == 4:
        return f"{b} beats per minute"
    words = [w for w, (lo, hi) in _TEMPO_NAMES.items() if lo <= bpm <= hi]
    if not words:
        return f"{b} bpm"
    word = rng.choice(words)
    return f"{word} ({b} bpm)" if style == 5 else word


def _instrument_text(meta: dict[str, Any], rng: random.Random) -> str:
    if meta.get("ensemble"):
        return rng.choice(_ENSEMBLE_WORDS.get(meta["ensemble"], [meta["ensemble"]]))
    names = list(dict.fromkeys(meta.get("instruments") or []))
    if not names:
        return ""
    picked = [rng.choice(_SYNONYMS.get(n, [n])) for n in names]
    return picked[0] if len(picked) == 1 else ", ".join(picked[:-1]) + " and " + picked[-1]


def make_captions(meta: dict[str, Any], rng: random.Random, n: int = 4, keep_p: float = 0.75) -> list[str]:
    """``n`` varied captions of a clip; each attribute (key, tempo, metre, instrument, style) is kept with
    probability ``keep_p`` and phrased at random."""
    c = controls_of(meta)
    style = meta.get("style", "piece")
    out = []
    for _ in range(n):
        parts: dict[str, str] = {}
        if rng.random() < keep_p:
            parts["key"] = _key_text(c, rng)
        if rng.random() < keep_p:
            parts["tempo"] = _tempo_text(c.bpm, rng)
        if meta.get("meter") and rng.random() < keep_p * 0.7:
            parts["metre"] = rng.choice([meta["meter"], f"{meta['meter']} time", f"in {meta['meter']}"])
        if rng.random() < keep_p and _instrument_text(meta, random.Random(0)):
            parts["instr"] = _instrument_text(meta, rng)
        what = style if rng.random() < keep_p else rng.choice(["piece", "tune", "track", "music", "song"])
        t = rng.randrange(4)
        instr = parts.get("instr")
        if t == 0:
            s = f"{'a' if what[0].lower() not in 'aeiou' else 'an'} {what}"
            s += f" for {instr}" if instr else ""
            s += f" in {parts['key']}" if "key" in parts else ""
            extras = [parts[k] for k in ("metre", "tempo") if k in parts]
        elif t == 1:
            s = f"{instr} playing {what}" if instr else what
            s += f" in {parts['key']}" if "key" in parts else ""
            extras = [f"at {parts['tempo']}" if "tempo" in parts else "", parts.get("metre", "")]
        elif t == 2:
            s = ", ".join(p for p in (parts.get("key"), what, instr) if p)
            extras = [parts.get("tempo", ""), parts.get("metre", "")]
        else:
            s = f"{what}" + (f", {parts['tempo']}" if "tempo" in parts else "")
            extras = [f"{instr}" if instr else "", f"key: {parts['key']}" if "key" in parts else "",
                      parts.get("metre", "")]
        out.append(", ".join([s] + [e for e in extras if e]))
    return out


__all__ = ["FAMILIES", "controls_of", "family_of", "make_captions"]
