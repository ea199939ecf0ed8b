"""README "Schema contracts": `SCHEMA_INSTR=1` makes the bench's schema
section print callgrind instructions per event. Slow (eight engines under
valgrind), so in `make chaos`: a tiny run proves the command works and
its rows keep their order: a contract costs instructions, a misfit (its
dead-letter copy) more."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SLUICE_BIN

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_schema_bench_instr_rows_print_and_rank(tmp_path):
    env = dict(os.environ, BUILD="build", RUNS="1", EVENTS="500",
               WORK=str(tmp_path), SLUICE=SLUICE_BIN, SCHEMA_INSTR="1",
               INSTR_SMALL="500", INSTR_LARGE="3000",
               LOADGEN=os.path.join(os.path.dirname(SLUICE_BIN), "tools", "loadgen"))
    r = subprocess.run(["tests/bench/schema.sh"], cwd=str(ROOT), env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout)
    lines = r.stdout.splitlines()
    at = lines.index(next(l for l in lines if l.split()[:2] == ["case", "instr/event"]))
    rows = {l.rsplit(None, 1)[0].strip(): float(l.rsplit(None, 1)[1])
            for l in lines[at + 1:]}
    assert set(rows) == {"tcp, no contract", "tcp + contract",
                         "+ contract, no pattern", "+ contract, misfits"}
    assert 0 < rows["tcp, no contract"] < rows["tcp + contract"] < \
        rows["+ contract, misfits"]
