"""bench/stage1.py run as a script at a toy budget; its JSON checked."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support import SAMPLES
from tests.support.bench_runs import last_json, run_bench


@pytest.mark.slow
def test_stage1_benchmark_holds_photos_out_of_both_stages_and_scores_every_checkpoint(tmp_path):
    """bench/stage1.py at a toy budget: the held-out photos are the last ones and train neither
    stage; every checkpoint is scored on held-out and training pairs."""
    out = last_json(run_bench("stage1.py", "--vae-steps", "10", "--steps", "2", "--eval-every", "1", "--holdout", "2",
                              "--held-variants", "1", "--threads", "1", "--out", str(tmp_path), timeout=900))
    names = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert out["photos"]["held_out"] == names[-2:] and out["photos"]["train"] == names[:-2]
    assert out["stage0"]["vae_steps"] == 10 and out["stage1"]["train_pairs"] == 2 * len(names[:-2])
    held = out["scores"]["held_out"]
    assert set(held) == {"init", "1", "2", "summary"} and held["summary"]["pairs"] == 2
    assert all(np.isfinite(v) for s in ("init", "1", "2") for v in held[s].values())
    assert held["1"]["bicubic"] == held["init"]["bicubic"]  # the baseline does not depend on E_dr
