"""The long schema fuzz: the test in tests/test_openapi_fuzz.py (schemathesis against the
OpenAPI document: no 5xx, every answer documented, schema-invalid requests refused) with many
more generated requests per route, randomised rather than the fixed examples of `make test`.

    python -m bench.fuzz [--examples 500]  → bench/out/fuzz.json (requests, failures, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=500, help="generated requests per route")
    a = p.parse_args()
    env = {**os.environ, "TEMPER_FUZZ_EXAMPLES": str(a.examples)}
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_openapi_fuzz.py"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    result = {
        "examples_per_route": a.examples,
        "seconds": time.monotonic() - t0,
        "passed": proc.returncode == 0,
        "summary": tail,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "fuzz.json").write_text(json.dumps(result, indent=2))
    print(proc.stdout[-5000:] if proc.returncode else tail)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
