"""Render real scores from the music21 corpus to captioned audio clips with FluidSynth.

Each selected piece is rendered in several *variants* (instrumentation, tempo, transposition, velocity), every render
is cut into fixed-length clips and each clip gets three caption phrasings built from its metadata. Clips are
loudness-normalised to a fixed RMS of -20 dBFS (0.1), scaled down further only where that would push the peak above
0.95. Splits are made by piece, so no piece appears in two splits.

Usage: ``python -m training.data --out data/music --pieces 500 --seed 0``

The rest of the corpus can be rendered later beside a dataset without changing it (its splits and test clips stay as
they are): ``--exclude data/music`` skips the pieces it holds (``--pieces all``: every usable piece left), and
``--merge`` joins datasets into one root of symlinks (each split the union of theirs) for the trainers:
``python -m training.data --out data/rest --pieces all --exclude data/music`` then
``python -m training.data --out data/full --merge data/music data/rest``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi
import soundfile as sf
from music21 import converter, corpus, harmony, meter, note, stream
from tqdm import tqdm

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
SPLITS = ("train", "valid", "test")
SOUNDFONTS = tuple(Path("/usr/share/sounds/sf2") / n for n in ("TimGM6mb.sf2", "FluidR3_GM.sf2", "default-GM.sf2"))
INSTALL_HINT = "apt-get install -y fluidsynth timgm6mb-soundfont"
CORPUS_ROOT = Path(corpus.__file__).parent
EXCLUDED_COLLECTIONS = {"demos", "theoryExercises"}  # notation test fixtures, not music
SCORE_SUFFIXES = {".krn", ".abc", ".mxl", ".xml", ".musicxml"}  # .rntxt files are harmonic analyses
MIN_QUARTERS = 8.0  # ~4 s at 120 BPM
BPM_RANGE = (50, 180)
TRANSPOSE_RANGE = (-6, 5)
TARGET_RMS, PEAK_CEILING, SILENCE_RMS = 0.1, 0.95, 1e-3

_MAJOR_TONICS = ("C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B")
_MINOR_TONICS = ("C", "C-sharp", "D", "E-flat", "E", "F", "F-sharp", "G", "G-sharp", "A", "B-flat", "B")
#: The 24 keys, index ``pc`` for ``pc`` major and ``12 + pc`` for ``pc`` minor; one fixed spelling per key.
KEY_NAMES = [f"{t} major" for t in _MAJOR_TONICS] + [f"{t} minor" for t in _MINOR_TONICS]

#: General MIDI programs used for single-instrument renders.
INSTRUMENTS = {0: "piano", 4: "electric piano", 6: "harpsichord", 11: "vibraphone", 12: "marimba", 19: "church organ",
               24: "acoustic guitar", 40: "violin", 42: "cello", 46: "harp", 48: "string ensemble", 52: "choir",
               56: "trumpet", 61: "brass section", 68: "oboe", 71: "clarinet", 73: "flute"}
#: Ensembles for per-part renders, members listed from the top voice to the bass (named by family, not by size).
ENSEMBLES = {"strings": (40, 40, 41, 42), "woodwinds": (73, 68, 71, 70), "brass": (56, 60, 57, 58),
             "saxophones": (64, 65, 66, 67), "mixed chamber ensemble": (73, 40, 71, 42)}
PROGRAM_NAMES = {**INSTRUMENTS, 41: "viola", 57: "trombone", 58: "tuba", 60: "French horn", 64: "soprano saxophone",
                 65: "alto saxophone", 66: "tenor saxophone", 67: "baritone saxophone", 70: "bassoon"}

#: Style by corpus path prefix; the longest matching prefix wins, ``FALLBACK_STYLE`` otherwise.
STYLES = {"bach": "Baroque chorale", "cpebach": "Baroque keyboard piece", "handel": "Baroque aria",
          "corelli": "Baroque trio sonata", "palestrina": "Renaissance mass movement", "josquin": "Renaissance chanson",
          "lusitano": "Renaissance madrigal", "luca": "Renaissance mass movement", "monteverdi": "Renaissance madrigal",
          "trecento": "medieval Trecento piece", "ciconia": "medieval Trecento piece", "essenFolksong": "folk song",
          "miscFolk": "folk tune", "ryansMammoth": "folk dance tune", "oneills1850": "Irish folk dance tune",
          "nottingham-dataset": "folk dance tune", "airdsAirs": "Scottish folk air",
          "beethoven": "Classical string quartet", "haydn": "Classical string quartet",
          "mozart": "Classical string quartet", "mozart/k545": "Classical piano sonata",
          "schumann_robert": "Romantic piece", "schumann_clara": "Romantic piano piece", "chopin": "Romantic mazurka",
          "schubert": "Romantic art song", "weber": "Romantic concertino", "verdi": "opera aria", "beach": "art song",
          "liliuokalani": "Hawaiian song", "joplin": "ragtime piece", "johnson_j_r": "hymn",
          "leadSheet": "popular song", "schoenberg": "atonal modern piece", "webern": "atonal modern piece"}
FALLBACK_STYLE = "classical piece"
POLYPHONIC = {"palestrina", "josquin", "lusitano", "luca", "monteverdi", "trecento", "ciconia"}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
OPUS_OF_PARTS = {"josquin"}  # abc files whose tunes are the voices of one piece
#: (upper BPM bound, Italian marking, English word)
TEMPO_WORDS = ((60, "largo", "very slow"), (76, "adagio", "slow"), (108, "andante", "moderately slow"),
               (120, "moderato", "moderate"), (168, "allegro", "fast"), (math.inf, "presto", "very fast"))


class MissingToolError(RuntimeError):
    """FluidSynth or a General MIDI soundfont is not installed."""


@dataclass(frozen=True)
class RenderConfig:
    """Settings shared by every render worker."""

    out: Path
    soundfont: Path
    seed: int
    clip_seconds: float
    variants: int
    max_clips: int


def key_name(pc: int, mode: str) -> str:
    """Spell the key with tonic pitch class ``pc`` (0 = C) and ``mode`` ('major'/'minor'), e.g. 'B-flat major'."""
    return KEY_NAMES[pc % 12 + (12 if mode == "minor" else 0)]


def tempo_words(bpm: float) -> tuple[str, str]:
    """Return (Italian marking, English word) for a tempo, e.g. ('allegro', 'fast') for 132 BPM."""
    return next((it, en) for bound, it, en in TEMPO_WORDS if bpm < bound)


def _a(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def make_captions(meta: dict[str, Any], rng: random.Random) -> list[str]:
    """Write three differently phrased captions for a clip from its metadata (key, bpm, instruments, style...)."""
    key = key_name(meta["tonic_pc"], meta["mode"])
    bpm = round(meta["bpm"])
    italian, english = tempo_words(meta["bpm"])
    style, names, ensemble = meta["style"], meta["instruments"], meta.get("ensemble")
    unique = list(dict.fromkeys(names))
    listed = unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " and " + unique[-1]
    instr = f"{ensemble} ({listed})" if ensemble else listed
    short = ensemble or listed
    m = meta["meter"]
    texture = "as a solo melody" if meta["texture"] == "solo melody" else f"{meta['texture']} texture"
    verb = rng.choice(["playing", "performing"])
    bpm_word = rng.choice(["BPM", "bpm"])
    return [
        f"{_a(english)} {english} {style} for {instr} in {key}{f', {m}' if m else ''}, {bpm} {bpm_word}",
        f"{instr} {verb} {_a(style)} {style} in {key} at {_a(italian)} {italian} {bpm} BPM, {texture}",
        f"{key} {style}, {short}, {english} tempo ({bpm} bpm){f', {m} time' if m else ''}",
    ]


def check_tools(soundfont: Path | None = None) -> Path:
    """Return the soundfont to use; raise ``MissingToolError`` if fluidsynth or a GM soundfont is missing."""
    if shutil.which("fluidsynth") is None:
        raise MissingToolError(f"fluidsynth is not on PATH; install it with: {INSTALL_HINT}")
    found = soundfont if soundfont is not None else next((p for p in SOUNDFONTS if p.exists()), None)
    if found is None or not found.exists():
        raise MissingToolError(f"no General MIDI soundfont found ({soundfont or SOUNDFONTS}); install: {INSTALL_HINT}")
    return found


def corpus_candidates(seed: int) -> list[str]:
    """Usable corpus score files (paths relative to the corpus root) in a seeded, collection-balanced order.

    Each collection (top-level folder) is shuffled, then the collections are interleaved round-robin, so the first N
    candidates are not ~40% Palestrina and ~33% Ryan's Mammoth tunes as a plain shuffle would give.
    """
    rng = random.Random(f"{seed}:pieces")
    groups: dict[str, list[str]] = {}
    seen: set[Path] = set()  # a few pieces exist in two formats (bwv366.krn and .mxl): keep one
    for p in sorted(corpus.getPaths()):
        rel, stem = p.relative_to(CORPUS_ROOT).as_posix(), p.with_suffix("")
        if rel.split("/")[0] not in EXCLUDED_COLLECTIONS and p.suffix in SCORE_SUFFIXES and stem not in seen:
            seen.add(stem)
            groups.setdefault(rel.split("/")[0], []).append(rel)
    order = sorted(groups)
    rng.shuffle(order)
    for name in order:
        rng.shuffle(groups[name])
    return [groups[g][i] for i in range(max(map(len, groups.values()))) for g in order if i < len(groups[g])]


def style_of(rel: str) -> str:
    """Map a corpus-relative path to a human style name (longest matching prefix of ``STYLES``)."""
    hits = [k for k in STYLES if rel == k or rel.startswith(k + "/")]
    return STYLES[max(hits, key=len)] if hits else FALLBACK_STYLE


def _load_score(rel: str, rng: random.Random) -> tuple[stream.Score, str]:
    """Parse one score; from a tune book (abc with many X: tunes) one seeded tune, id'd as ``rel#X``."""
    path = CORPUS_ROOT / rel
    if path.suffix == ".abc" and rel.split("/")[0] not in OPUS_OF_PARTS:
        numbers = re.findall(r"^X:\s*(\d+)", path.read_text(errors="ignore"), re.MULTILINE)
        if len(numbers) > 1:  # a tune book: parse a single tune only, which is much faster
            number = rng.choice(numbers)
            return converter.parse(path, number=int(number)), f"{rel}#{number}"
    parsed = converter.parse(path)
    if isinstance(parsed, stream.Opus):
        parsed = parsed.mergeScores() if rel.split("/")[0] in OPUS_OF_PARTS else parsed.scores[0]
    return parsed, rel


def parse_piece(rel: str, seed: int, max_quarters: float) -> tuple[str, dict[str, Any] | None, str]:
    """Parse one corpus file into a picklable piece dict (notes of the first ``max_quarters`` only).

    Returns (rel, piece or None, reason for a skip).
    """
    try:
        score, piece_id = _load_score(rel, random.Random(f"{seed}:{rel}"))
        parts: list[list[tuple[float, float, int]]] = []
        for part in score.parts if score.hasPartLikeStreams() else [score]:
            notes = [(float(n.offset), float(n.quarterLength), p.midi) for n in part.stripTies().flatten().notes
                     if n.quarterLength > 0 and not isinstance(n, harmony.Harmony) for p in getattr(n, "pitches", ())]
            if notes:
                parts.append(sorted(notes))
    except Exception as exc:  # noqa: BLE001 - music21 raises arbitrary types on malformed files; skip, don't crash
        return rel, None, f"parse failed: {type(exc).__name__}: {exc}"
    if not parts:
        return rel, None, "no notes"
    first = min(p[0][0] for p in parts)
    quarters = max(o + d for p in parts for o, d, _ in p) - first
    if quarters < MIN_QUARTERS:
        return rel, None, f"too short ({quarters:.1f} quarter notes)"
    parts = [[(o - first, d, m) for o, d, m in p if o - first < max_quarters] for p in parts]
    excerpt = stream.Stream()
    for p in parts:
        for o, d, m in p:
            excerpt.insert(o, note.Note(m, quarterLength=d))
    key = excerpt.analyze("key")
    ts = score.recurse().getElementsByClass(meter.TimeSignature).first()
    collection, n_parts = rel.split("/")[0], len(parts)
    if n_parts == 1:
        texture = "solo melody"
    elif collection == "bach":
        texture = "homophonic"
    elif collection in POLYPHONIC:
        texture = "polyphonic"
    else:
        texture = f"{NUMBER_WORDS.get(n_parts, 'many')}-part"
    piece = {"piece": piece_id, "parts": parts, "quarters": min(quarters, max_quarters),
             "tonic_pc": key.tonic.pitchClass, "mode": "minor" if key.mode == "minor" else "major",
             "meter": ts.ratioString if ts else None, "style": style_of(rel), "texture": texture}
    return rel, piece, ""


def _parse_task(args: tuple[str, int, float]) -> tuple[str, dict[str, Any] | None, str]:
    return parse_piece(*args)


def variant_transpose(tonic_pc: int, base_pc: int, variant: int, variants: int) -> int:
    """Semitones (in ``TRANSPOSE_RANGE``) that move ``tonic_pc`` to this variant's target tonic.

    The targets of one piece's variants are spread evenly round the circle from a seeded ``base_pc``
    (3 variants: base, base + 4, base + 8), so every key is covered evenly and each piece is heard in far-apart keys.
    """
    target = (base_pc + variant * 12 // max(1, variants)) % 12
    return (target - tonic_pc + 6) % 12 - 6


def _variant_midi(piece: dict[str, Any], rng: random.Random, clip_s: float, needed_s: float, transpose: int
                  ) -> tuple[pretty_midi.PrettyMIDI, dict[str, Any]]:
    """Draw one variant (tempo, instruments, velocity) and build its MIDI up to ``needed_s`` seconds.

    A piece shorter than one clip at the drawn tempo is looped until it fills one clip.
    """
    n_parts = len(piece["parts"])
    bpm = float(rng.randint(*BPM_RANGE))
    velocity_scale = round(rng.uniform(0.6, 1.15), 3)
    ensemble = None
    if n_parts > 1 and rng.random() < 0.5:
        ensemble = rng.choice(sorted(ENSEMBLES))
        members = ENSEMBLES[ensemble]
        programs = [members[round(i * (len(members) - 1) / (n_parts - 1))] for i in range(n_parts)]
    else:
        programs = [rng.choice(sorted(INSTRUMENTS))] * n_parts
    spq = 60.0 / bpm
    loops = max(1, math.ceil((clip_s + 0.25) / (piece["quarters"] * spq)))
    midi = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    for part, program in zip(piece["parts"], programs, strict=True):
        inst = pretty_midi.Instrument(program=program, name=PROGRAM_NAMES[program])
        for k in range(loops):
            for o, d, m in part:
                start = (o + k * piece["quarters"]) * spq
                if start < needed_s + 1.0:
                    vel = int(np.clip(round(80 * velocity_scale + rng.gauss(0, 4)), 1, 127))
                    pitch = int(np.clip(m + transpose, 0, 127))
                    inst.notes.append(pretty_midi.Note(vel, pitch, start, start + d * spq))
        midi.instruments.append(inst)
    tonic_pc = (piece["tonic_pc"] + transpose) % 12
    meta = {"tonic": key_name(tonic_pc, piece["mode"]).rsplit(" ", 1)[0], "tonic_pc": tonic_pc, "mode": piece["mode"],
            "bpm": bpm, "programs": programs, "instruments": [PROGRAM_NAMES[p] for p in programs],
            "ensemble": ensemble, "meter": piece["meter"], "style": piece["style"], "texture": piece["texture"],
            "transpose": transpose, "velocity_scale": velocity_scale, "loops": loops}
    return midi, meta


def _render(midi: pretty_midi.PrettyMIDI, soundfont: Path, tmp: Path) -> np.ndarray:
    """Render ``midi`` with FluidSynth to mono float32 at ``SAMPLE_RATE`` (float output, so loud chords don't clip)."""
    mid, wav = tmp / "in.mid", tmp / "out.wav"
    midi.write(str(mid))
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(SAMPLE_RATE), "-O", "float", "-F", str(wav),
                    str(soundfont), str(mid)], check=True, capture_output=True)
    audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def cut_clips(audio: np.ndarray, clip_len: int, max_clips: int) -> list[tuple[int, np.ndarray]]:
    """Cut non-overlapping clips of exactly ``clip_len`` samples from the first sound on; drop near-silent clips.

    Clips are scaled to an RMS of ``TARGET_RMS`` with the peak capped at ``PEAK_CEILING``. Returns
    (start sample in the render, clip) pairs; the render's time 0 is the first note, which falls on a beat.
    """
    loud = np.flatnonzero(np.abs(audio) > SILENCE_RMS)
    if loud.size == 0:
        return []
    start = max(0, int(loud[0]) - SAMPLE_RATE // 100)
    clips = []
    for c in range(max_clips):
        clip = audio[start + c * clip_len:start + (c + 1) * clip_len]
        rms = float(np.sqrt(np.mean(np.square(clip)))) if clip.size else 0.0
        if clip.size < clip_len or rms < SILENCE_RMS:
            continue
        gain = min(TARGET_RMS / rms, PEAK_CEILING / float(np.abs(clip).max()))
        clips.append((start + c * clip_len, (clip * gain).astype(np.float32)))
    return clips


def render_piece(piece: dict[str, Any], index: int, split: str, cfg: RenderConfig) -> list[dict[str, Any]]:
    """Render all variants of one piece, write its clips under ``cfg.out/split`` and return their jsonl rows."""
    rng = random.Random(f"{cfg.seed}:{piece['piece']}:render")
    clip_len = round(cfg.clip_seconds * SAMPLE_RATE)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", piece["piece"].rsplit(".", 1)[0]).strip("_")
    rows = []
    base_pc = rng.randrange(12)
    with tempfile.TemporaryDirectory() as tmp:
        for v in range(cfg.variants):
            transpose = variant_transpose(piece["tonic_pc"], base_pc, v, cfg.variants)
            midi, meta = _variant_midi(piece, rng, cfg.clip_seconds, cfg.max_clips * cfg.clip_seconds, transpose)
            rendered = cut_clips(_render(midi, cfg.soundfont, Path(tmp)), clip_len, cfg.max_clips)
            for c, (start, clip) in enumerate(rendered):
                clip_id = f"{index:05d}_{slug}_v{v}c{c}"
                rel_path = f"{split}/{clip_id}.wav"
                sf.write(cfg.out / rel_path, clip, SAMPLE_RATE, subtype="PCM_16")
                # clip_start_s: where the clip starts on the render's clock (0 = first note), for the beat phase
                meta_c = {**meta, "seconds": cfg.clip_seconds, "clip_start_s": round(start / SAMPLE_RATE, 4)}
                rows.append({"id": clip_id, "split": split, "path": rel_path, "piece": piece["piece"], "variant": v,
                             "clip": c, "captions": make_captions(meta_c, rng), "metadata": meta_c})
    return rows


def _render_task(args: tuple[dict[str, Any], int, str, RenderConfig]) -> list[dict[str, Any]]:
    return render_piece(*args)


def assign_splits(n: int, seed: int, valid_frac: float, test_frac: float) -> list[str]:
    """Split labels for ``n`` pieces, deterministic in ``seed``; valid and test get at least one piece when n >= 3."""
    n_valid = max(1, round(n * valid_frac)) if n >= 3 else 0
    n_test = max(1, round(n * test_frac)) if n >= 3 else 0
    labels = ["valid"] * n_valid + ["test"] * n_test + ["train"] * (n - n_valid - n_test)
    random.Random(f"{seed}:splits").shuffle(labels)
    return labels


def load_split(root: Path, split: str) -> list[dict[str, Any]]:
    """Read ``root/<split>.jsonl`` into a list of row dicts (``path`` is relative to ``root``)."""
    with open(Path(root) / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_card(rows: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Summarise a dataset: hours, clips and pieces per split, key/tempo/instrument/style distributions."""
    metas = [r["metadata"] for r in rows]
    keys = Counter(key_name(m["tonic_pc"], m["mode"]) for m in metas)
    bins = Counter(f"{int(m['bpm']) // 20 * 20}-{int(m['bpm']) // 20 * 20 + 19}" for m in metas)
    return {
        **config,
        "hours": round(sum(m["seconds"] for m in metas) / 3600, 3),
        "splits": {s: {"clips": sum(r["split"] == s for r in rows),
                       "pieces": len({r["piece"] for r in rows if r["split"] == s}),
                       "hours": round(sum(r["metadata"]["seconds"] for r in rows if r["split"] == s) / 3600, 3)}
                   for s in SPLITS},
        "keys": {k: keys.get(k, 0) for k in KEY_NAMES},
        "tempo_bins": dict(sorted(bins.items(), key=lambda kv: int(kv[0].split("-")[0]))),
        "tempo_words": dict(Counter(tempo_words(m["bpm"])[0] for m in metas).most_common()),
        "instruments": dict(Counter(i for m in metas for i in sorted(set(m["instruments"]))).most_common()),
        "ensembles": dict(Counter(m["ensemble"] or "single instrument" for m in metas).most_common()),
        "styles": dict(Counter(m["style"] for m in metas).most_common()),
        "textures": dict(Counter(m["texture"] for m in metas).most_common()),
    }


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Write ``data_card.json`` and a human-readable ``DATA_CARD.md`` into ``out``."""
    (out / "data_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    lines = ["# Data card: music21 corpus rendered with FluidSynth", "",
             f"Command: `{card['command']}`", ""]
    lines += [f"Merged from: {', '.join(f'`{c}`' for c in card.get('source_commands', []))}.", ""] * ("merged" in card)
    lines += [(f"Seed {card.get('seed')}, soundfont `{card.get('soundfont')}`, {SAMPLE_RATE} Hz mono, "
               f"{card.get('clip_seconds')} s clips, {card.get('normalisation')}."), "",
              f"Total: {card['hours']} h in {sum(s['clips'] for s in card['splits'].values())} clips.", ""]
    sections = [("Splits", {s: f"{v['clips']} clips, {v['pieces']} pieces, {v['hours']} h"
                            for s, v in card["splits"].items()})]
    sections += [(name.replace("_", " ").capitalize(), card[name])
                 for name in ("keys", "tempo_bins", "tempo_words", "instruments", "ensembles", "styles", "textures")]
    for title, table in sections:
        lines += [f"## {title}", "", "| value | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in table.items()] + [""]
    (out / "DATA_CARD.md").write_text("\n".join(lines), encoding="utf-8")


def dataset_pieces(root: Path) -> set[str]:
    """Corpus paths of the pieces a dataset holds (a tune book's ``rel#X`` counts as its file ``rel``)."""
    return {r["piece"].split("#", 1)[0] for s in SPLITS if (Path(root) / f"{s}.jsonl").is_file()
            for r in load_split(root, s)}


def render_dataset(out: Path, pieces: int | None, seed: int, *, clip_seconds: float = 10.24, variants: int = 3,
                   max_clips_per_variant: int = 2, soundfont: Path | None = None, workers: int = 2,
                   paths: Sequence[str] | None = None, valid_frac: float = 0.05, test_frac: float = 0.05,
                   exclude: Sequence[Path] = (), command: str | None = None) -> dict[str, Any]:
    """Render ``pieces`` corpus pieces (None: every usable one) into a captioned clip dataset under ``out`` and
    return its data card.

    ``paths`` (corpus-relative, tried in order) replaces the seeded, collection-balanced order of the corpus.
    ``exclude``: datasets whose pieces are skipped; clip ids then number on from their piece count, so that no id
    repeats one of theirs.
    """
    sf2 = check_tools(soundfont)
    out = Path(out)
    if any((out / s).exists() or (out / f"{s}.jsonl").exists() for s in SPLITS):
        raise FileExistsError(f"{out} already holds a dataset; choose an empty --out")
    held = [dataset_pieces(r) for r in exclude]
    skip = set().union(*held)
    candidates = [c for c in (list(paths) if paths is not None else corpus_candidates(seed)) if c not in skip]
    offset = sum(map(len, held))
    pieces = len(candidates) if pieces is None else pieces
    max_quarters = max_clips_per_variant * clip_seconds * BPM_RANGE[1] / 60 + 4
    chosen: list[dict[str, Any]] = []
    with Pool(workers) as pool, tqdm(total=pieces, desc="parse", unit="piece") as bar:
        for rel, piece, reason in pool.imap(_parse_task, [(r, seed, max_quarters) for r in candidates]):
            if piece is None:
                log.info("skip %s: %s", rel, reason)
                continue
            chosen.append(piece)
            bar.update()
            if len(chosen) == pieces:
                break
    if len(chosen) < pieces:
        log.warning("only %d usable pieces out of %d requested", len(chosen), pieces)
    for s in SPLITS:
        (out / s).mkdir(parents=True, exist_ok=True)
    cfg = RenderConfig(out, sf2, seed, clip_seconds, variants, max_clips_per_variant)
    splits = assign_splits(len(chosen), seed, valid_frac, test_frac)
    tasks = [(p, offset + i, s, cfg) for i, (p, s) in enumerate(zip(chosen, splits, strict=True))]
    with Pool(workers) as pool:
        rows = [r for rs in tqdm(pool.imap(_render_task, tasks), total=len(tasks), desc="render", unit="piece")
                for r in rs]
    for s in SPLITS:
        with open(out / f"{s}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if r["split"] == s)
    card = build_card(rows, {"command": command or f"render_dataset(pieces={pieces}, seed={seed})", "seed": seed,
                             "pieces_requested": pieces, "excluded": [str(r) for r in exclude],
                             "soundfont": sf2.name, "sample_rate": SAMPLE_RATE,
                             "clip_seconds": clip_seconds, "variants": variants,
                             "max_clips_per_variant": max_clips_per_variant,
                             "normalisation": f"RMS {TARGET_RMS} (-20 dBFS), peak capped at {PEAK_CEILING}"})
    write_card(out, card)
    log.info("wrote %d clips (%.2f h) from %d pieces to %s", len(rows), card["hours"], len(chosen), out)
    return card


def merge_datasets(out: Path, roots: Sequence[Path], command: str | None = None) -> dict[str, Any]:
    """Join datasets rendered apart (``exclude``) into ``out``: each split's clips are symlinks to theirs and its jsonl
    the union of theirs; returns the merged data card.

    Raises:
        FileExistsError: ``out`` already holds a dataset.
        ValueError: fewer than two roots, or two datasets share a clip id or a piece (the splits would leak).
    """
    out = Path(out)
    if len(roots) < 2:
        raise ValueError("--merge needs at least two datasets")
    if any((out / s).exists() or (out / f"{s}.jsonl").exists() for s in SPLITS):
        raise FileExistsError(f"{out} already holds a dataset; choose an empty --out")
    rows: list[dict[str, Any]] = []
    for root in map(Path, roots):
        mine = [r for s in SPLITS if (root / f"{s}.jsonl").is_file() for r in load_split(root, s)]
        clash = ({r["id"] for r in rows} & {r["id"] for r in mine}) or ({r["piece"] for r in rows}
                                                                         & {r["piece"] for r in mine})
        if clash:
            raise ValueError(f"{root} shares {sorted(clash)[:3]} with an earlier dataset; render it with --exclude")
        for r in mine:
            (out / r["split"]).mkdir(parents=True, exist_ok=True)
            (out / r["path"]).symlink_to((root / r["path"]).resolve())
        rows += mine
    for s in SPLITS:
        with open(out / f"{s}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if r["split"] == s)
    cards = [json.loads(c.read_text()) for c in (Path(r) / "data_card.json" for r in roots) if c.is_file()]
    settings = ("seed", "soundfont", "sample_rate", "clip_seconds", "variants", "max_clips_per_variant",
                "normalisation")
    differ = [k for k in settings if len({json.dumps(c.get(k)) for c in cards}) > 1]
    if differ:
        raise ValueError(f"the datasets were rendered with different {', '.join(differ)}; merge like with like")
    card = build_card(rows, {"command": command or f"merge_datasets({[str(r) for r in roots]})",
                             **{k: cards[0][k] for k in settings if cards and k in cards[0]},
                             "merged": [str(r) for r in roots], "source_commands": [c.get("command") for c in cards]})
    write_card(out, card)
    log.info("merged %d clips of %d pieces from %s into %s", len(rows), len({r["piece"] for r in rows}),
             ", ".join(map(str, roots)), out)
    return card


_NO_PIECES = object()


def _pieces_arg(value: str) -> int | None:
    """``--pieces``: a positive integer, or ``all`` (None)."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python -m training.data --out DIR --pieces N --seed S``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pieces", type=_pieces_arg, default=_NO_PIECES,
                        help="pieces to render (an integer, or 'all': every usable piece not excluded)")
    parser.add_argument("--exclude", type=Path, nargs="+", default=[], metavar="DATASET",
                        help="skip the pieces these datasets hold (render the rest of the corpus beside them)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DATASET",
                        help="join these datasets into --out (symlinks) instead of rendering")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-seconds", type=float, default=10.24)
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--max-clips-per-variant", type=int, default=2)
    parser.add_argument("--soundfont", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = "python -m training.data " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.merge is not None:
        merge_datasets(args.out, args.merge, command=command)
        return
    if args.pieces is _NO_PIECES:
        parser.error("--pieces is required to render (an integer, or 'all')")
    render_dataset(args.out, args.pieces, args.seed, exclude=args.exclude, clip_seconds=args.clip_seconds,
                   variants=args.variants, max_clips_per_variant=args.max_clips_per_variant, soundfont=args.soundfont,
                   workers=args.workers, command=command)


if __name__ == "__main__":
    main()
