"""bench/gpu_suite.py's smoke test: `--device cpu --quick` runs every family beside its peer where the peer imports
(Whisper compiled too), and writes the table."""

import math
import subprocess
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
FAMILIES = ["whisper", "speech2text", "bark (coarse)", "soundstorm", "vits"]


def test_the_quick_cpu_run_measures_every_family_and_writes_the_table(tmp_path):
    out = tmp_path / "suite.md"
    result = subprocess.run([sys.executable, str(REPO_DIR / "bench" / "gpu_suite.py"), "--device", "cpu", "--quick",
                             "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[cell.strip("| ") for cell in row] for row in rows[1:]]  # without the header
    assert sorted({row[0] for row in rows}) == sorted(FAMILIES)
    for family in FAMILIES:
        variants = [row[1] for row in rows if row[0] == family]
        compiled = ["fp32, sdpa, compile on"] if family == "whisper" else []
        assert variants == ["fp32, sdpa, compile off", *compiled], family
    for row in rows:
        assert math.isfinite(float(row[2])) and float(row[2]) > 0, row
    transformers_peers = [row for row in rows if row[0] in ("whisper", "speech2text", "bark (coarse)")
                          and row[1].endswith("off")]
    assert all(row[5] == "transformers" and float(row[6]) > 0 for row in transformers_peers)
    assert "s in all" in out.read_text() and "skipped" not in out.read_text()
