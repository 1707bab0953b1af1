"""Check a bundle without running it and report everything that is wrong: ``python -m melody_edge.verify BUNDLE``
(also ``melody-edge verify BUNDLE``).

Runs the checks of ``melody_edge.bundle.load_bundle`` one by one (manifest, paths and links, model config, parity
gate, each file's sha256, assets) and, unless ``--no-load``, opens every graph with its backend. Prints one line per
check; exit status 0 when the bundle is sound, 1 when something is wrong, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melody_edge import bundle as B
from melody_edge.errors import MelodyEdgeError


@dataclass
class Report:
    """What ``verify_bundle`` found: the checks that passed, and each problem as ``(check, message)``."""

    path: str
    passed: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "passed": self.passed,
                "problems": [{"check": c, "message": m} for c, m in self.problems], "warnings": self.warnings}


class _Collect(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(record.getMessage())


def verify_bundle(path: str | Path, *, load: bool = True) -> Report:
    """Run every bundle check and collect all problems (a broken manifest stops the checks that need it)."""
    report = Report(str(path))
    handler = _Collect(report.warnings)
    B.log.addHandler(handler)
    B._warned.discard(str(Path(path).resolve()))  # report the gate warning even if this process loaded it before
    try:
        _run_checks(path, report, load)
    finally:
        B.log.removeHandler(handler)
    return report


def _run_checks(path: str | Path, report: Report, load: bool) -> None:
    def check(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except MelodyEdgeError as e:
            report.problems.append((name, str(e)))
            return None
        except Exception as e:  # a check that crashes is itself a finding, never a traceback
            report.problems.append((name, f"unexpected {type(e).__name__}: {e}"))
            return None
        report.passed.append(name)
        return True if result is None else result

    root = check("folder", B._check_root, path)
    if root is None:
        return
    manifest = check("manifest", B.read_manifest, root)
    if manifest is None:
        return
    paths_ok = check("paths", B.check_paths, root, manifest)
    config = check("config", B.check_config, manifest)
    check("gate", B.check_gate, root, manifest)
    if not paths_ok:
        return  # never read files that may lie outside the bundle
    hashes_ok = True
    for name, entry in manifest["files"].items():
        one = {**manifest, "files": {name: entry}}
        hashes_ok &= check(f"file {name}", B.check_files, root, one, hash_files=manifest["format"] == "onnx") is True
    if config is None or not hashes_ok:
        return
    bundle = B.Bundle(root, manifest, config)
    if manifest["format"] == "coreml":
        from melody_edge.backends.coreml_backend import verify_files  # hashes .mlpackage folders too

        if not check("hashes", verify_files, bundle):
            return
    if check("assets", B.check_assets, bundle) and load:
        check("graphs", _load_graphs, bundle)


def _load_graphs(bundle: B.Bundle) -> None:
    if bundle.format == "onnx":
        from melody_edge.backends.onnx_backend import OnnxBackend

        OnnxBackend(bundle, providers=["CPUExecutionProvider"])
    else:
        from melody_edge.backends.coreml_backend import CoreMLBackend

        CoreMLBackend(bundle)


def build_parser(prog: str = "python -m melody_edge.verify") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Check a model bundle and report everything that is wrong.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder (the one holding manifest.json)")
    p.add_argument("--no-load", action="store_true", help="do not open the graphs with their backend")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(a: argparse.Namespace) -> int:
    """Verify ``a.bundle``, print the report (stdout), return the exit status (0 sound, 1 problems)."""
    report = verify_bundle(a.bundle, load=not a.no_load)
    if a.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for name in report.passed:
            print(f"ok    {name}")
        for name, msg in report.problems:
            print(f"FAIL  {name}: {msg}")
        for msg in report.warnings:
            print(f"warn  {msg}")
        verdict = "sound" if report.ok else f"NOT usable ({len(report.problems)} problem(s))"
        print(f"{report.path}: {verdict}")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m melody_edge.verify``."""
    try:
        return run(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
