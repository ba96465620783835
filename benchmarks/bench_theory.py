"""Time `grokbasin run`'s theory stage alone on a finished run (issue 11: ≤ 20 s at paper scale).

    python benchmarks/bench_theory.py RUN_DIR

Removes RUN_DIR/theory.json, then times ``checkpoint_theory`` (closed forms, K_eff, λ_Lap and
numeric rank(J_c)/2 at the final checkpoint) and ``report_run`` (figures and reports, theory
cached), and prints both with the theory it computed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from grokbasin.pipeline import checkpoint_theory, report_run, stored_config
from grokbasin.store.rundir import RunDir


def main() -> None:
    run = RunDir(sys.argv[1])
    (run.path / "theory.json").unlink(missing_ok=True)
    cfg = stored_config(run)
    epoch = int(run.read_provenance().get("final_epoch", run.checkpoint_epochs()[-1]))
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    t0 = time.perf_counter()
    theory = checkpoint_theory(run, cfg, epoch)
    t1 = time.perf_counter()
    report_run(run, cfg)
    t2 = time.perf_counter()
    print(f"theory {t1 - t0:.1f} s, report (theory cached) {t2 - t1:.1f} s")
    print(json.dumps({"numeric": theory.get("numeric"), "laplace": theory.get("laplace")}))


if __name__ == "__main__":
    main()
