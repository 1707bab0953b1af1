"""Tests for the music21 + FluidSynth dataset renderer in ``training.data``."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.data import (
    KEY_NAMES,
    SAMPLE_RATE,
    SPLITS,
    MissingToolError,
    assign_splits,
    check_tools,
    key_name,
    load_split,
    make_captions,
    merge_datasets,
    render_dataset,
    tempo_words,
)

PIECES = ["bach/bwv66.6.mxl", "ryansMammoth/7thRegimentReel.abc", "essenFolksong/altdeu10.abc"]


def _meta(**overrides: object) -> dict:
    meta = {"tonic_pc": 10, "mode": "major", "bpm": 72.0, "instruments": ["string ensemble"] * 4, "ensemble": None,
            "meter": "3/4", "style": "Baroque chorale", "texture": "homophonic"}
    return {**meta, **overrides}


def test_key_names_are_24_distinct_and_spelled_out() -> None:
    assert len(set(KEY_NAMES)) == 24
    assert key_name(10, "major") == "B-flat major"
    assert key_name(6, "minor") == "F-sharp minor"
    assert key_name(-2, "minor") == "B-flat minor"
    assert not any("-" in name.replace("-flat", "").replace("-sharp", "") for name in KEY_NAMES)


@pytest.mark.parametrize(("bpm", "italian", "english"), [
    (50, "largo", "very slow"), (72, "adagio", "slow"), (90, "andante", "moderately slow"),
    (110, "moderato", "moderate"), (140, "allegro", "fast"), (180, "presto", "very fast")])
def test_tempo_words(bpm: float, italian: str, english: str) -> None:
    assert tempo_words(bpm) == (italian, english)


def test_make_captions_mentions_key_tempo_and_instrument() -> None:
    captions = make_captions(_meta(), random.Random(0))
    assert len(set(captions)) == 3
    for caption in captions:
        assert "B-flat major" in caption and "72" in caption and "string ensemble" in caption
    assert "slow" in captions[0] and "adagio" in captions[1] and "3/4" in captions[0]

    ensemble = make_captions(_meta(tonic_pc=6, mode="minor", bpm=150.0, ensemble="strings",
                                   instruments=["violin", "violin", "viola", "cello"], meter=None), random.Random(1))
    assert all("F-sharp minor" in c and "strings" in c and "150" in c for c in ensemble)
    assert "violin, viola and cello" in ensemble[0] and "allegro" in ensemble[1] and "None" not in " ".join(ensemble)


def test_assign_splits_is_deterministic_and_fills_valid_and_test() -> None:
    assert sorted(assign_splits(3, 0, 0.05, 0.05)) == ["test", "train", "valid"]
    labels = assign_splits(100, 7, 0.05, 0.05)
    assert labels == assign_splits(100, 7, 0.05, 0.05)
    assert (labels.count("train"), labels.count("valid"), labels.count("test")) == (90, 5, 5)


def test_missing_soundfont_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(MissingToolError, match="apt-get install -y fluidsynth timgm6mb-soundfont"):
        check_tools(tmp_path / "missing.sf2")


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed (apt-get install fluidsynth)")
def test_render_dataset_writes_clips_rows_and_card(tmp_path: Path) -> None:
    clip_seconds = 2.0
    card = render_dataset(tmp_path, 3, 0, clip_seconds=clip_seconds, variants=2, max_clips_per_variant=2,
                          paths=PIECES, workers=2)
    rows = {s: load_split(tmp_path, s) for s in SPLITS}
    all_rows = [r for s in SPLITS for r in rows[s]]
    assert all_rows and all(r["split"] == s for s in SPLITS for r in rows[s])
    pieces = {s: {r["piece"] for r in rows[s]} for s in SPLITS}
    assert all(pieces[s] for s in SPLITS), "3 pieces must give one piece to each split"
    assert sum(len(v) for v in pieces.values()) == len(set().union(*pieces.values())) == 3, "a piece is in two splits"

    for row in all_rows:
        audio, sr = sf.read(tmp_path / row["path"])
        assert sr == SAMPLE_RATE and audio.ndim == 1 and len(audio) == round(clip_seconds * SAMPLE_RATE)
        assert np.sqrt(np.mean(audio**2)) > 0.01
        meta = row["metadata"]
        assert len(row["captions"]) == 3 and 0 <= meta["tonic_pc"] < 12 and meta["mode"] in ("major", "minor")
        key, bpm = key_name(meta["tonic_pc"], meta["mode"]), str(round(meta["bpm"]))
        instrument = meta["ensemble"] or meta["instruments"][0]
        for caption in row["captions"]:
            assert key in caption and bpm in caption and instrument in caption
        assert any(w in " ".join(row["captions"]) for w in tempo_words(meta["bpm"]))

    assert (tmp_path / "DATA_CARD.md").is_file() and (tmp_path / "data_card.json").is_file()
    assert sum(v["clips"] for v in card["splits"].values()) == len(all_rows)
    assert sum(card["keys"].values()) == len(all_rows)
    with pytest.raises(FileExistsError):
        render_dataset(tmp_path, 3, 0, paths=PIECES)


def test_rest_of_corpus_renders_beside_a_dataset_and_merges_without_leaks(tmp_path: Path) -> None:
    first, rest, full = tmp_path / "first", tmp_path / "rest", tmp_path / "full"
    kw = {"clip_seconds": 2.0, "variants": 1, "max_clips_per_variant": 1, "workers": 1}
    render_dataset(first, 3, 0, paths=PIECES, **kw)
    more = ["essenFolksong/altdeu20.abc", "bach/bwv10.7.mxl", "ryansMammoth/AbithaMugginsFavoriteReel.abc"]
    card = render_dataset(rest, None, 0, paths=PIECES + more, exclude=[first], **kw)  # None: every piece left
    pieces = lambda root: {r["piece"].split("#")[0] for s in SPLITS for r in load_split(root, s)}  # noqa: E731
    assert pieces(first) == set(PIECES) and pieces(rest) == set(more), "the excluded pieces must not render again"
    assert card["excluded"] == [str(first)]
    ids = [r["id"] for s in SPLITS for r in load_split(rest, s)]
    assert all(int(i.split("_")[0]) >= len(PIECES) for i in ids), "ids number on after the excluded dataset's"

    merged = merge_datasets(full, [first, rest])
    for s in SPLITS:
        rows = load_split(full, s)
        assert [r["id"] for r in rows] == [r["id"] for r in load_split(first, s) + load_split(rest, s)]
        for r in rows:
            assert (full / r["path"]).is_symlink() and sf.info(full / r["path"]).samplerate == SAMPLE_RATE
    assert sum(v["pieces"] for v in merged["splits"].values()) == len(PIECES + more)
    assert (full / "DATA_CARD.md").is_file()
    with pytest.raises(ValueError, match="--exclude"):
        merge_datasets(tmp_path / "twice", [first, first])
    with pytest.raises(ValueError, match="at least two"):
        merge_datasets(tmp_path / "one", [first])
    with pytest.raises(FileExistsError):
        merge_datasets(full, [first, rest])
