"""Benchmark of the real_models training step: float64 against float32 Adam steps.

Exact command (from the repository root)::

    .venv/bin/python scripts/bench_real_models.py

Expected cost on a 2-core machine: about 1 minute. The ``small`` preset's fine-tuning step
(``lora_v`` on the d = 8 two-head tied model, L = 4 layers, batch 32 of n = 64 tokens; the
Adam step that dominates the experiment's cost) is compiled, then ``--steps`` steps are timed
(wall and this process's CPU time) in float64 and in float32 in this run, from the same
initial weights and batches; printed: each dtype's time per step, the ratio float64/float32,
and the largest difference of the trained adapter and of the final loss between the two (how
much float32 training changes the result). CPU time is the figure to compare on a shared
machine (wall time includes waiting for a core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _run(p, model, base, u, y, trainable, dtype: str, steps: int):
    from solver.experiments.real_models import _fit

    q = dict(p, train_dtype=dtype)
    _fit(model, "lora_v", q, trainable, base, u, y, steps=1, lr=q["ft_lr"], seed=5)  # compile
    t0, c0 = time.perf_counter(), time.process_time()
    out, losses = _fit(model, "lora_v", q, trainable, base, u, y, steps=steps, lr=q["ft_lr"],
                       seed=5)  # fmt: skip
    return out, losses, (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed Adam steps per dtype")
    ap.add_argument("--d", type=int, default=8, help="token dimension")
    args = ap.parse_args(argv)
    from solver.experiments.real_models import PRESETS, _data, _method_setup, _model

    p = dict(PRESETS["small"])
    model = _model(p, args.d, p["layers"])
    base = model.init(seed=0)
    u, y = _data(p, "new", p["finetune_count"], 1)
    trainable, _ = _method_setup(p, model, base, "lora_v", 0, u, y)
    res = {dt: _run(p, model, base, u, y, trainable, dt, args.steps)
           for dt in ("float64", "float32")}  # fmt: skip
    for dt, (_, losses, wall, cpu) in res.items():
        print(f"{dt}: {1e3 * wall:.1f} ms wall, {1e3 * cpu:.1f} ms CPU per Adam step "
              f"(d = {args.d}, {args.steps} steps; final batch loss {losses[-1]:.8f})")  # fmt: skip
    (o64, l64, w64, c64), (o32, l32, w32, c32) = res["float64"], res["float32"]
    diff = max(float(np.abs(o64[m][k] - o32[m][k]).max()) for m in o64 for k in o64[m])
    print(f"ratio float64 / float32: {w64 / w32:.2f} (wall), {c64 / c32:.2f} (CPU)")
    print(f"largest difference of the trained adapter {diff:.2e}, of the final loss "
          f"{abs(l64[-1] - l32[-1]):.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
