"""Size vs quality per recipe: gather ``parity.json`` files into ``recipes.json`` and a README table.

``python -m conversion.recipes BUNDLE_OR_PARITY_JSON ... --json conversion/recipes.json --readme README.md``
replaces the text between ``<!-- recipes:start -->`` and ``<!-- recipes:end -->`` (generated, never typed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [
    ("lm_token_agreement", "LM token agreement", "{:.3f}"),
    ("lm_logits_max_abs", "LM logits max abs diff", "{:.2e}"),
    ("text_snr_db", "text dB", "{:.1f}"),
    ("dpd_snr_db", "DPD dB", "{:.1f}"),
    ("vae_snr_db", "VAE dB", "{:.1f}"),
    ("e2e_snr_db", "end-to-end dB (teacher-forced)", "{:.1f}"),
]


def load_rows(paths: list[Path]) -> list[dict]:
    """One row per parity.json (a bundle folder or the file itself), with the gate result and the bundle's source
    commit when its manifest is beside it."""
    rows = []
    for p in paths:
        f = p / "parity.json" if p.is_dir() else p
        d = json.loads(f.read_text())
        manifest = f.parent / "manifest.json"
        source = json.loads(manifest.read_text()).get("source", {}) if manifest.is_file() else {}
        rows.append({"recipe": f"onnx {d['precision']}", "precision": d["precision"], "total_mb": d.get("total_mb"),
                     "sizes_mb": d.get("sizes_mb", {}), **d["figures"], "passed": d.get("passed"),
                     "commit": source.get("commit"), "source": str(f)})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    head = "| recipe | size (MB) | " + " | ".join(c[1] for c in COLUMNS) + " | gate |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = [c[2].format(r[c[0]]) if isinstance(r.get(c[0]), (int, float)) else "-" for c in COLUMNS]
        gate = {True: "passed", False: "failed"}.get(r.get("passed"), "not run")
        lines.append(f"| {r['recipe']} | {r['total_mb']:.1f} | " + " | ".join(cells) + f" | {gate} |")
    return "\n".join(lines)


def replace_section(readme: Path, marker: str, body: str) -> None:
    """Replace the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``readme``."""
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} section")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{body}\n{end}{after}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("parity", nargs="+", type=Path)
    p.add_argument("--json", type=Path, default=Path("conversion/recipes.json"))
    p.add_argument("--readme", type=Path, default=None)
    a = p.parse_args(argv)
    rows = load_rows(a.parity)
    a.json.write_text(json.dumps(rows, indent=2, default=float))
    md = table(rows)
    if a.readme:
        replace_section(a.readme, "recipes", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
