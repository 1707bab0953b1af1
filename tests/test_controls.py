"""The controls parser and explicit values (melody_edge.controls), and the controls as model conditions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melody_edge import Generator
from melody_edge.controls import (
    FAMILIES,
    INSTRUMENTS,
    KEY_PROFILES,
    KK_MAJOR,
    KK_MINOR,
    METRES,
    Controls,
    beat_features,
    control_ids,
    estimate_key,
    key_fit,
    key_rotation,
    key_token_bias,
    parse_controls,
    resolve,
)
from melody_edge.errors import InvalidInputError
from melody_edge.tokenizer import rotate_tokens

# (prompt, tonic, mode, bpm, metre, instrument); None = the prompt does not say
PHRASINGS = [
    # keys in every common spelling
    ("B-flat minor", 10, "minor", None, None, None),
    ("Bb minor", 10, "minor", None, None, None),
    ("b♭ minor", 10, "minor", None, None, None),
    ("bb minor", 10, "minor", None, None, None),
    ("B flat minor", 10, "minor", None, None, None),
    ("Bbm", 10, "minor", None, None, None),
    ("in F# major", 6, "major", None, None, None),
    ("in F♯ major", 6, "major", None, None, None),
    ("F sharp major", 6, "major", None, None, None),
    ("C sharp minor", 1, "minor", None, None, None),
    ("c# minor", 1, "minor", None, None, None),
    ("C#m", 1, "minor", None, None, None),
    ("E-flat", 3, "major", None, None, None),
    ("Eb", 3, "major", None, None, None),
    ("E flat major", 3, "major", None, None, None),
    ("in e minor", 4, "minor", None, None, None),
    ("in D", 2, "major", None, None, None),
    ("in the key of G", 7, "major", None, None, None),
    ("key of A minor", 9, "minor", None, None, None),
    ("A minor", 9, "minor", None, None, None),
    ("a minor", 9, "minor", None, None, None),
    ("Am", 9, "minor", None, None, None),
    ("G maj", 7, "major", None, None, None),
    ("G min", 7, "minor", None, None, None),
    ("A-flat major", 8, "major", None, None, None),
    ("Ab major", 8, "major", None, None, None),
    ("G# minor", 8, "minor", None, None, None),
    ("D-flat major", 1, "major", None, None, None),
    ("Gb major", 6, "major", None, None, None),
    ("Cb major", 11, "major", None, None, None),
    ("B major", 11, "major", None, None, None),
    ("F minor", 5, "minor", None, None, None),
    ("a sad tune in a minor key", None, "minor", None, None, None),
    ("something in a major key", None, "major", None, None, None),
    # tempo as numbers
    ("120 bpm", None, None, 120.0, None, None),
    ("at 96 BPM", None, None, 96.0, None, None),
    ("96 beats per minute", None, None, 96.0, None, None),
    ("tempo 72", None, None, 72.0, None, None),
    ("tempo: 140", None, None, 140.0, None, None),
    ("♩ = 100", None, None, 100.0, None, None),
    ("q=88", None, None, 88.0, None, None),
    ("84.5 bpm", None, None, 84.5, None, None),
    ("at 60bpm", None, None, 60.0, None, None),
    # tempo as words (the range's middle)
    ("largo", None, None, 55.0, None, None),
    ("adagio", None, None, 71.0, None, None),
    ("andante", None, None, 92.0, None, None),
    ("moderato", None, None, 114.0, None, None),
    ("allegro", None, None, 144.0, None, None),
    ("presto", None, None, 184.0, None, None),
    ("very slow", None, None, 52.5, None, None),
    ("slow", None, None, 68.0, None, None),
    ("moderate", None, None, 114.0, None, None),
    ("lively", None, None, 135.0, None, None),
    ("fast", None, None, 154.0, None, None),
    ("brisk", None, None, 135.0, None, None),
    ("very fast", None, None, 184.0, None, None),
    # metre
    ("in 3/4", None, None, None, "3/4", None),
    ("6/8 time", None, None, None, "6/8", None),
    ("12/8", None, None, None, "12/8", None),
    ("a waltz", None, None, None, "3/4", None),
    ("a jig", None, None, None, "6/8", None),
    ("common time", None, None, None, "4/4", None),
    ("24/7 radio", None, None, None, None, None),
    # instruments and synonyms
    ("fiddle", None, None, None, None, "strings"),
    ("on the keys", None, None, None, None, "piano"),
    ("solo violin", None, None, None, None, "strings"),
    ("cello duet", None, None, None, None, "strings"),
    ("church organ", None, None, None, None, "organ"),
    ("a harp", None, None, None, None, "plucked"),
    ("acoustic guitar", None, None, None, None, "plucked"),
    ("brass band", None, None, None, None, "brass"),
    ("French horn", None, None, None, None, "brass"),
    ("English horn", None, None, None, None, "woodwinds"),
    ("flute and oboe", None, None, None, None, "woodwinds"),
    ("alto sax", None, None, None, None, "saxophones"),
    ("a choir", None, None, None, None, "voice"),
    ("marimba", None, None, None, None, "mallets"),
    ("harpsichord", None, None, None, None, "piano"),
    # whole prompts
    ("sad piano in A minor at 60 bpm", 9, "minor", 60.0, None, "piano"),
    ("a calm piano waltz in D major", 2, "major", 70.0, "3/4", "piano"),
    ("a moderate chorale for string ensemble in E-flat major, 4/4, 90 BPM", 3, "major", 90.0, "4/4", "strings"),
    ("upbeat fiddle jig in D, 6/8", 2, "major", 130.0, "6/8", "strings"),
    ("lullaby on the harp in G, ♩ = 66", 7, "major", 66.0, None, "plucked"),
    ("slow dreamy strings, Eb major, around 70 beats per minute", 3, "major", 70.0, None, "strings"),
    ("TRUMPET FANFARE IN B-FLAT MAJOR, 120 BPM", 10, "major", 120.0, None, "brass"),
    # none at all
    ("", None, None, None, None, None),
    ("I am happy today", None, None, None, None, None),
    ("ambient texture with rain", None, None, None, None, None),
    ("music for a rainy afternoon", None, None, None, None, None),
    # conflicting: the first mention wins, a number wins over a word
    ("C major, no wait, D minor", 0, "major", None, None, None),
    ("a slow piece at 150 bpm", None, None, 150.0, None, None),
    ("piano then violin", None, None, None, None, "piano"),
    ("3/4 or maybe 6/8", None, None, None, "3/4", None),
]


def test_there_are_at_least_80_phrasings() -> None:
    assert len(PHRASINGS) >= 80


@pytest.mark.parametrize(("prompt", "tonic", "mode", "bpm", "metre", "instrument"), PHRASINGS)
def test_parser_reads_the_controls(prompt, tonic, mode, bpm, metre, instrument) -> None:
    got = parse_controls(prompt)
    assert (got.tonic, got.mode, got.metre, got.instrument) == (tonic, mode, metre, instrument), got
    assert got.bpm == pytest.approx(bpm) if bpm is not None else got.bpm is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_parser_never_raises_on_arbitrary_unicode(text: str) -> None:
    got = parse_controls(text)
    assert isinstance(got, Controls)
    assert got.bpm is None or 20 <= got.bpm <= 400
    assert got.instrument is None or got.instrument in FAMILIES


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_parser_takes_any_value(value) -> None:
    assert parse_controls(value) == Controls()


def test_parser_survives_surrogates_and_huge_text() -> None:
    assert parse_controls("\ud800 piano in A minor \udfff").key == "A minor"
    assert parse_controls("la " * 100_000 + "in D major").tonic is None  # only the first 10,000 characters count
    assert parse_controls("in D major " + "la " * 100_000).key == "D major"


def test_explicit_values_override_the_prompt() -> None:
    got = resolve("sad piano in A minor at 60 bpm", key="D major", bpm=120, instrument="fiddle", metre="6/8")
    assert (got.key, got.bpm, got.instrument, got.metre) == ("D major", 120.0, "strings", "6/8")
    assert resolve("in A minor", bpm=72).key == "A minor"  # what is not overridden comes from the text
    assert resolve("in A minor", key="Bb").key == "B-flat major"


@pytest.mark.parametrize(("kwargs", "listed"), [
    ({"bpm": 0}, "30, 300"), ({"bpm": 10_000}, "30, 300"), ({"bpm": float("nan")}, "30, 300"),
    ({"bpm": "fast"}, "number"), ({"bpm": True}, "number"),
    ({"key": "H major"}, "tonic A-G"), ({"key": "major"}, "tonic A-G"), ({"key": 5}, "string"),
    ({"metre": "3/5"}, "4/4"), ({"metre": 34}, "4/4"),
    ({"instrument": "theremin"}, "strings"), ({"instrument": 3}, "strings"),
])
def test_invalid_explicit_values_raise_listing_what_is_accepted(kwargs, listed) -> None:
    with pytest.raises(InvalidInputError, match=listed):
        resolve("anything", **kwargs)


def test_vocabulary_is_consistent() -> None:
    assert set(INSTRUMENTS.values()) == set(FAMILIES)
    assert len(set(METRES)) == len(METRES)
    ids = control_ids(Controls(), key_rotation=True)
    assert ids == {"key": 2, "bpm": 0.0, "metre": len(METRES), "family": len(FAMILIES)}
    assert control_ids(parse_controls("in B minor"), key_rotation=False)["key"] == 23


def test_beat_features_follow_the_tempo() -> None:
    f = beat_features(50, 0.0, 120.0)  # 2 beats a second = one beat every 12.5 tokens
    np.testing.assert_allclose(f[0], [0, 1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(f[25], [0, 1, 0, 1], atol=1e-5)  # two beats later
    np.testing.assert_allclose(beat_features(10, 5.0, 120.0), f[5:15], atol=1e-5)  # a later start continues it
    assert not beat_features(10, 0.0, None).any()


def test_estimate_key_reads_scales() -> None:
    major = np.zeros(12)
    major[[0, 2, 4, 5, 7, 9, 11]] = 1.0
    major[[0, 4, 7]] += 1.0
    for tonic in range(12):
        assert estimate_key(np.roll(major, tonic)) == (tonic, "major")


# --- the controls as conditions of the debug model --------------------------------------------------------------

@pytest.fixture(scope="module")
def gen() -> Generator:
    return Generator("debug")


def _next_token_logits(gen: Generator, prompt: str, controls: Controls) -> np.ndarray:
    from melody_edge.generator import GenerationStats

    prefix = gen._prefix(prompt, controls, 1.0, GenerationStats())
    beat = beat_features(1, 0.0, controls.bpm)[None]
    logits, _ = gen.backend.lm_prefill(prefix, np.zeros((1, 0), np.int64), beat)
    return logits[0]


@pytest.mark.parametrize("control", [Controls(mode="minor"), Controls(bpm=150.0), Controls(metre="3/4"),
                                     Controls(instrument="brass")])
def test_each_control_changes_the_lms_next_token_distribution(gen: Generator, control: Controls) -> None:
    base = _next_token_logits(gen, "a piece", Controls())
    assert np.abs(_next_token_logits(gen, "a piece", control) - base).max() > 1e-4


def test_dropping_every_control_is_the_text_only_path(gen: Generator) -> None:
    import torch

    ids, mask = gen._text_tokenizer()(["a piece in A minor"])
    be = gen.backend
    with torch.inference_mode():
        states = be.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        cond = be.model.lm.cond
        text_only = cond.with_controls(cond.text_prefix(states, torch.from_numpy(mask)), None).numpy()
    absent = {k: np.array([v], dtype=np.float32 if k == "bpm" else np.int64)
              for k, v in control_ids(Controls(), key_rotation=True).items()}
    np.testing.assert_allclose(be.encode_text(ids, mask, absent), text_only, atol=1e-6)
    via_generator = _next_token_logits(gen, "a piece in A minor", resolve("a piece in A minor", key=None))
    via_no_controls = _next_token_logits(gen, "a piece in A minor", Controls())
    assert np.abs(via_generator - via_no_controls).max() > 1e-4  # the parsed key is not the text-only path


def test_results_carry_the_controls_they_used(gen: Generator) -> None:
    a = gen.generate("a waltz in B-flat minor at 90 bpm for violin", seconds=0.7, seed=0, bpm=100)
    assert (a.controls.key, a.controls.bpm, a.controls.metre, a.controls.instrument) == \
        ("B-flat minor", 100.0, "3/4", "strings")
    assert gen.controls("a waltz in B-flat minor", instrument="keys") == Controls(
        tonic=10, mode="minor", bpm=None, metre="3/4", instrument="piano")
    chunks = list(gen.stream("sad piano", seconds=0.7, seed=1, key="A minor"))
    assert all(c.controls.key == "A minor" and c.controls.instrument == "piano" for c in chunks)
    quiet = gen.generate("a waltz in B-flat minor", seconds=0.7, seed=0, read_controls=False)
    assert quiet.controls == Controls()


def test_the_asked_tonic_rotates_the_dpds_tokens(gen: Generator, monkeypatch) -> None:
    seen, heard = [], []
    real = gen.backend.dpd

    def dpd(z, a, t, c=None):
        seen.append(t[0].copy())
        heard.append(None if c is None else c.copy())
        return real(z, a, t, c)

    monkeypatch.setattr(gen.backend, "dpd", dpd)
    gen.generate("a piece", seconds=0.7, seed=3, key="C major", steps=1)
    in_c = seen[-1]
    gen.generate("a piece", seconds=0.7, seed=3, key="E major", steps=1)
    in_e = seen[-1]
    np.testing.assert_array_equal(in_e % 12, (in_c % 12 + 4) % 12)  # same music, four semitones up
    np.testing.assert_array_equal(in_e // 12, in_c // 12)


def test_the_dpd_hears_the_asked_family_and_key(gen: Generator, monkeypatch) -> None:
    cfg = gen.config.dpd
    assert cfg.controlled
    heard = []
    real = gen.backend.dpd

    def dpd(z, a, t, c=None):
        heard.append(c.copy())
        return real(z, a, t, c)

    monkeypatch.setattr(gen.backend, "dpd", dpd)
    none = [cfg.n_families, cfg.n_keys]
    gen.generate("a piece for fiddle in A minor", seconds=0.7, seed=0, steps=1, guidance=2.0)
    # the conditional row hears strings in A minor (key index 12 + 9), the unconditional row (DPD guidance) nothing
    assert heard[-1].tolist() == [[FAMILIES.index("strings"), 21], none]
    gen.generate("a piece", seconds=0.7, seed=0, steps=1, guidance=1.0, key="E-flat major")
    assert heard[-1].tolist() == [[cfg.n_families, 3]]
    gen.generate("a piece", seconds=0.7, seed=0, steps=1, guidance=1.0)
    assert heard[-1].tolist() == [none]
    v = [real(np.ones((1, 8, gen.config.vae.latent_dim), np.float32), np.full((1, 8), 0.7, np.float32),
              np.zeros((1, 8), np.int64), np.array([c])) for c in ([0, 3], [0, 15], none)]
    # the debug model's embeddings are random: the controls change the DPD's output, "none" is the default
    assert np.abs(v[0] - v[1]).max() > 1e-5
    np.testing.assert_array_equal(v[2], real(np.ones((1, 8, gen.config.vae.latent_dim), np.float32),
                                             np.full((1, 8), 0.7, np.float32), np.zeros((1, 8), np.int64)))


@pytest.mark.parametrize("shift", range(12))
def test_key_rotation_moves_music_to_the_asked_key(shift: int) -> None:
    g_major = np.roll(np.array(KK_MAJOR), 7)  # music in G major
    assert key_rotation(g_major, 0, "major") == 5  # up a fourth to C major
    assert key_rotation(g_major, shift, "major") == (shift - 7) % 12
    e_minor = np.roll(np.array(KK_MINOR), 4)
    assert key_rotation(e_minor, shift, "minor") == (shift - 4) % 12
    assert key_rotation(e_minor, shift, None) == (shift - 4) % 12  # no mode asked: the better-fitting mode
    assert key_rotation(np.ones(12), shift, "major") == shift  # no pitch content: the plain rotation from C
    assert key_rotation(np.zeros(12), shift, "minor") == shift
    rotated = np.roll(g_major, key_rotation(g_major, shift, "major"))
    assert estimate_key(rotated) == (shift, "major")
    for major, minor in KEY_PROFILES.values():  # music shaped like any of the four profiles is read alike
        assert key_rotation(np.roll(np.array(major), 7), shift, "major") == (shift - 7) % 12
        assert key_rotation(np.roll(np.array(minor), 2), shift, "minor") == (shift - 2) % 12
        assert key_fit(np.roll(np.array(minor), 2), "minor") > key_fit(np.roll(np.array(minor), 2), "major")


def test_the_first_window_is_rotated_to_fit_the_asked_key_and_a_steer_keeps_the_offset(gen: Generator,
                                                                                          monkeypatch) -> None:
    made, seen = [], []
    real_lm, real_dpd = gen._lm, gen.backend.dpd
    monkeypatch.setattr(gen, "_lm", lambda *a, **k: (made.append(real_lm(*a, **k)), made[-1])[1])
    monkeypatch.setattr(gen.backend, "dpd", lambda z, a, t, c=None: (seen.append(t[0].copy()), real_dpd(z, a, t, c))[1])
    feats = gen.backend.semantic_tokenizer.token_features()
    for seed in range(4):
        gen.generate("a piece", seconds=0.7, seed=seed, key="D minor", steps=1)
        r = key_rotation(feats[made[-1]][:, :12].mean(axis=0), 2, "minor")
        np.testing.assert_array_equal(seen[-1][: len(made[-1])], rotate_tokens(made[-1], r))
    # a stream keeps the first window's offset from the asked tonic when a steer asks another key
    made.clear()
    s = gen.stream("a piece", seconds=4 * gen.chunk_seconds, seed=5, key="C major", steps=1)
    next(s)
    offset = key_rotation(feats[made[0]][:, :12].mean(axis=0), 0, "major")
    s.steer("a piece", key="A major")
    next(s)
    new = made[-1]
    np.testing.assert_array_equal(seen[-1][len(seen[-1]) - len(new):], rotate_tokens(new, (9 + offset) % 12))


def test_lm_keeps_the_draft_that_fits_best_and_drafts_are_reproducible(gen: Generator) -> None:
    from melody_edge.generator import GenerationStats

    c = gen.config
    ctl = gen.controls("a piece", key="D minor")
    s = gen._settings(1, None, None, None, None, None, "paper", key_candidates=3)
    prefix = gen._prefix("a piece", ctl, s.lm_guidance, GenerationStats())
    beat = beat_features(20, 0, ctl.bpm, c.controls.beat_harmonics, c.token_rate)
    scored = []

    def fit(t):
        scored.append(t.copy())
        return float(t.sum() % 7)  # any deterministic score

    stats, seen = GenerationStats(), []
    out = gen._lm(prefix, np.zeros(0, np.int64), 20, s, np.random.default_rng(0), stats,
                  lambda stage, done, total: seen.append((stage, done, total)), beat, fit)
    assert len(scored) == 3 and all(len(t) == 20 for t in scored)
    np.testing.assert_array_equal(out, max(scored, key=lambda t: t.sum() % 7))
    assert len({t.tobytes() for t in scored}) == 3  # three different drafts
    assert stats.passes["lm"] == 60 and seen[-1] == ("lm", 60, 60)
    again = gen._lm(prefix, np.zeros(0, np.int64), 20, s, np.random.default_rng(0), GenerationStats(), None, beat,
                    fit)
    np.testing.assert_array_equal(again, out)  # drafts run on threads, each with its own spawned random stream
    one = gen._settings(1, None, None, None, None, None, "paper", key_candidates=1)
    plain = GenerationStats()
    gen._lm(prefix, np.zeros(0, np.int64), 20, one, np.random.default_rng(0), plain, None, beat, fit)
    assert plain.passes["lm"] == 20 and len(scored) == 6  # one candidate: no drafts, nothing scored
    # generate drafts only with a key asked, and only the first window
    assert gen.generate("a piece", seconds=0.7, seed=0, key="A minor", steps=1,
                        key_candidates=3).stats.passes["lm"] == 3 * 18
    assert gen.generate("a piece", seconds=0.7, seed=0, steps=1, key_candidates=3).stats.passes["lm"] == 18
    w = c.window_tokens
    song = gen.generate("a piece", seconds=(w + c.chunk_tokens) / c.token_rate, seed=0, key="A minor", steps=1,
                        key_candidates=2)
    assert song.stats.passes["lm"] == 2 * w + c.chunk_tokens  # drafts of the first window only


def test_a_model_without_a_semantic_tokenizer_rotates_to_the_asked_tonic_without_drafts(gen: Generator,
                                                                                         monkeypatch) -> None:
    monkeypatch.setattr(gen.backend, "semantic_tokenizer", None)  # e.g. random weights: no token features
    audio = gen.generate("a piece", seconds=0.7, seed=0, key="D minor", steps=1, key_candidates=3)
    assert audio.stats.passes["lm"] == 18 and audio.controls.key == "D minor"


@pytest.mark.parametrize("tonic", [0, 3, 10])
def test_key_token_bias_scores_each_tokens_pitch_content_against_the_key(tonic: int) -> None:
    scale = np.zeros(12)
    scale[[0, 2, 4, 5, 7, 9, 11]] = 1.0
    tokens = np.stack([np.roll(scale, tonic),  # the scale of the key
                       np.roll(scale, tonic + 6),  # a tritone away: the fewest shared notes
                       np.roll(np.eye(12)[0], tonic),  # the tonic alone
                       np.roll(np.eye(12)[0], tonic + 1),  # the semitone above it
                       np.ones(12), np.zeros(12)])  # flat: no pitch content
    b = key_token_bias(tokens, tonic, "major")
    assert b.shape == (6,) and b.dtype == np.float32 and np.all(np.abs(b) <= 1.0 + 1e-6)
    assert b[0] > 0.5 > b[1] and b[2] > 0 > b[3] and b[4] == 0.0 and b[5] == 0.0
    # transposing the tokens and the key together changes nothing; the minor scale reads minor music better
    np.testing.assert_allclose(key_token_bias(np.roll(tokens, 5, axis=1), tonic + 5, "major"), b, atol=1e-6)
    minor = np.roll(np.array(KEY_PROFILES["aarden-essen"][1]), tonic)[None]
    assert key_token_bias(minor, tonic, "minor")[0] > key_token_bias(minor, tonic, "major")[0]
    # a scale, not a profile: the dominant and subdominant chords sit in the key as well as the tonic chord does
    triads = np.stack([np.roll(np.eye(12)[[0, 4, 7]].sum(0), tonic + r) for r in (0, 7, 5, 1)])  # I, V, IV, bII
    t = key_token_bias(triads, tonic, "major")
    np.testing.assert_allclose(t[1:3], t[0], atol=1e-6)
    assert t[0] > 0 > t[3]
    np.testing.assert_array_equal(key_token_bias(tokens, tonic, None), b)  # no mode: major


def test_key_strength_pulls_the_lms_tokens_into_the_asked_key(gen: Generator, monkeypatch) -> None:
    feats = gen.backend.semantic_tokenizer.token_features()[:, :12]
    asked = []
    real_bias = gen._key_bias
    monkeypatch.setattr(gen, "_key_bias", lambda c, t, s: (asked.append((t, s)), real_bias(c, t, s))[1])
    made = []
    real_lm = gen._lm
    monkeypatch.setattr(gen, "_lm", lambda *a, **k: (made.append(real_lm(*a, **k)), made[-1])[1])

    def fit(**kw):
        gen.generate("a piece", seconds=2.0, seed=0, key="D minor", steps=1, key_candidates=1, **kw)
        return float(key_token_bias(feats, 0, "minor")[made[-1]].mean())  # the LM writes in C (transposing)

    off, on = fit(key_strength=0.0), fit(key_strength=8.0)
    assert on > off + 0.1
    assert asked[-1] == (0, 8.0)  # the first window: the key as the LM writes it, C minor
    # 0 = the plain LM (no bias at all), the same tokens as before key guidance existed
    assert real_bias(gen.controls("a piece", key="D minor"), 0, 0.0) is None
    assert real_bias(gen.controls("a piece"), None, 8.0) is None  # no key asked: nothing to pull towards
    b = real_bias(gen.controls("a piece", key="D minor"), 0, 2.0)
    assert b.shape == (gen.config.lm.vocab_size,)
    np.testing.assert_allclose(b[: len(feats)], 2.0 * key_token_bias(feats, 0, "minor"), rtol=1e-6)
    # a longer song keeps the key as its first window was rotated into it in later windows
    c = gen.config
    gen.generate("a piece", seconds=(c.window_tokens + c.chunk_tokens) / c.token_rate, seed=1, key="D minor",
                 steps=1, key_candidates=1, key_strength=4.0)
    first = key_rotation(gen.backend.semantic_tokenizer.token_features()[made[-2]][:, :12].mean(axis=0), 2, "minor")
    assert asked[-2] == (0, 4.0) and asked[-1] == ((2 - first) % 12, 4.0)


@pytest.mark.parametrize("bad", [-1, 21, float("nan"), True, "4"])
def test_key_strength_is_checked(gen: Generator, bad) -> None:
    with pytest.raises(InvalidInputError, match="key_strength"):
        gen.generate("a piece", seconds=0.5, key="A minor", key_strength=bad)


@pytest.mark.parametrize("bad", [0, 17, 2.5, True, "4"])
def test_key_candidates_are_checked(gen: Generator, bad) -> None:
    with pytest.raises(InvalidInputError, match="key_candidates"):
        gen.generate("a piece", seconds=0.5, key="A minor", key_candidates=bad)


def test_explicit_controls_are_validated_by_the_generator(gen: Generator) -> None:
    with pytest.raises(InvalidInputError, match="30, 300"):
        gen.generate("a piece", seconds=0.5, bpm=0)
    with pytest.raises(InvalidInputError, match="tonic"):
        gen.controls("a piece", key="H major")
    with pytest.raises(InvalidInputError, match="families|family"):
        list(gen.stream("a piece", seconds=0.5, instrument="kazoo-synth"))


def test_cli_takes_the_controls(tmp_path, capsys) -> None:
    from melody_edge.cli import main

    out = tmp_path / "x.wav"
    assert main(["generate", "sad piano", "--preset", "debug", "--key", "A minor", "--bpm", "72", "--metre", "3/4",
                 "--seconds", "0.5", "--seed", "0", "--quiet", "-o", str(out)]) == 0
    assert "A minor, 72 BPM, 3/4, piano" in capsys.readouterr().err
    assert out.is_file()
    assert main(["generate", "x", "--preset", "debug", "--key", "H major", "--seconds", "0.5", "-o",
                 str(tmp_path / "y.wav")]) == 2
    assert "tonic A-G" in capsys.readouterr().err
    assert not (tmp_path / "y.wav").exists()


def test_drafts_are_scored_by_the_family_head_when_an_instrument_is_asked(gen: Generator, monkeypatch) -> None:
    import dataclasses

    from melody_edge import generator as G
    from melody_edge.controls import FAMILIES

    tok = gen.backend.semantic_tokenizer
    k = tok.centroids.shape[0]
    w = np.zeros((k, len(FAMILIES)), np.float32)
    w[: k // 2, FAMILIES.index("brass")] = 40.0  # the lower half of the base codes sounds like brass
    from melody_edge.tokenizer import SemanticTokenizer

    head = SemanticTokenizer(tok.extractor, tok.mean, tok.std, tok.group_weights, tok.centroids, tok.rotations,
                               (w, np.zeros(len(FAMILIES)), FAMILIES))
    brass = np.arange(0, k // 2) * tok.rotations
    other = np.arange(k // 2, k) * tok.rotations
    ctl = gen.controls("a piece for brass")
    score = G._draft_score(head, ctl, key=False)
    assert score(brass) > score(other)
    assert G._draft_score(tok, ctl, key=False) is None  # no head: no drafts for the instrument alone
    keyed = dataclasses.replace(ctl, tonic=2, mode="minor")
    assert G._draft_score(head, keyed, key=True)(brass) - G._draft_score(tok, keyed, key=True)(brass) == \
        pytest.approx(G.FAMILY_WEIGHT * head.family_logprobs(brass)["brass"])
    monkeypatch.setattr(gen.backend, "semantic_tokenizer", head)
    drafted = gen.generate("a piece for brass", seconds=0.7, seed=0, steps=1, key_candidates=3)
    assert drafted.stats.passes["lm"] == 3 * 18 and drafted.controls.instrument == "brass"
