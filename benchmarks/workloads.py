"""Workloads, named by the job as llama-bench does (``gen10s``, ``stream600s``, ``cont10s+10s``).

- ``genNs``: ``Generator.generate`` of N seconds;
- ``streamNs``: ``Generator.stream`` of N seconds, timed chunk by chunk;
- ``contPs+Ns``: ``Generator.continue_audio`` of a P-second audio prompt by N seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from melody_edge import Audio, GenerationStats, Generator

PROMPT = "a slow chorale for string ensemble in G major"
_PATTERNS = {
    "gen": re.compile(r"gen(\d+(?:\.\d+)?)s"),
    "stream": re.compile(r"stream(\d+(?:\.\d+)?)s"),
    "cont": re.compile(r"cont(\d+(?:\.\d+)?)s\+(\d+(?:\.\d+)?)s"),
}


@dataclass(frozen=True)
class Workload:
    """One named job: its kind, the seconds of audio it makes and (``cont``) the seconds of audio it is given."""

    name: str
    kind: str
    seconds: float
    prompt_seconds: float = 0.0

    @classmethod
    def parse(cls, name: str) -> Workload:
        """``gen10s`` -> Workload('gen10s', 'gen', 10.0); raises ``ValueError`` for an unknown name."""
        for kind, pattern in _PATTERNS.items():
            m = pattern.fullmatch(name)
            if m:
                if kind == "cont":
                    return cls(name, kind, float(m.group(2)), float(m.group(1)))
                return cls(name, kind, float(m.group(1)))
        raise ValueError(f"unknown workload {name!r}; use genNs, streamNs or contPs+Ns (e.g. gen10s, cont10s+10s)")

    def with_seconds(self, seconds: float) -> Workload:
        """The same kind of job for another duration (renamed to match, e.g. stream600s -> stream60s)."""
        if self.kind == "cont":
            return Workload(f"cont{self.prompt_seconds:g}s+{seconds:g}s", "cont", seconds, self.prompt_seconds)
        return Workload(f"{self.kind}{seconds:g}s", self.kind, seconds)


def run_once(gen: Generator, wl: Workload, *, steps: int, seed: int, prompt_audio: Audio | None = None,
             key_candidates: int | None = None) -> GenerationStats:
    """Do the workload once with ``PROMPT`` (a stream is consumed to the end) and return the call's stats.
    ``key_candidates``: the generator's key drafts (None: its default; a continuation makes none)."""
    drafts = {} if key_candidates is None else {"key_candidates": key_candidates}
    if wl.kind == "gen":
        return gen.generate(PROMPT, wl.seconds, seed=seed, steps=steps, **drafts).stats
    if wl.kind == "cont":
        if prompt_audio is None:
            raise ValueError(f"{wl.name} needs the audio prompt to continue")
        return gen.continue_audio(prompt_audio, PROMPT, wl.seconds, seed=seed, steps=steps).stats
    stats = GenerationStats()
    for chunk in gen.stream(PROMPT, seconds=wl.seconds, seed=seed, steps=steps, **drafts):
        stats.add(chunk.stats)
    return stats
