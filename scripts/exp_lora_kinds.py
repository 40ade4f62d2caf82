"""Tied vs random vs orthogonal vs aligned LoRA (Prop 3.3 of arXiv 2402.15415), same norms.

Base A = V = diag(V_diag) (eigenvectors u_j = e_j, gap lambda1 - lambda2); tokens start in the
half-space <x, u1> > 0. Perturbations of V with operator norm eps: "tied" B A^T (a fixed
random rank-r LoRA), "random" a new random B A^T on every layer of length layer_length,
"orthogonal" P B A^T P with P = I - u1 u1^T (restricted to the orthogonal complement of u1),
"aligned" u2 u1^T (aligned with the small-gap eigendirections). Recorded over time:
W2(mu_t, nu_t) and the cluster-direction drift |u(t) - u~(t)|, compared at the end with the
Prop 3.3 drift |u1 - u1~| (dominant eigenvector of V + dV).
Outputs: lora_kinds.csv (rows per kind, eps, seed and saved time), lora_kinds.png,
summary.json (final table), params.toml.

Commands (from the repository root):

    mpiexec -n 2 .venv/bin/python scripts/exp_lora_kinds.py --output out/lora_kinds
    .venv/bin/python scripts/exp_lora_kinds.py --preset paper --output out/lora_kinds-paper

Presets (wall time on 2 cores): tiny ~2 s (tests); small 42 s measured 2026-11-30 (d = 3,
eps in {0.05, 0.1, 0.2}, 3 seeds, T = 40); paper 1 min 24 s measured (n = 64, T = 60, 4 norms,
6 seeds). TOML keys override the preset (V_diag, n, kappa, x0_seed, T, dt, save_every, eps,
seeds, layer_length, rank, kinds). Rerunning resumes.
"""

import sys

from solver.experiments import cli, run_lora_kinds
from solver.experiments.lora_kinds import PRESETS


def main(argv=None) -> int:
    return cli(argv, name="lora_kinds", doc=__doc__, presets=PRESETS, run=run_lora_kinds)


if __name__ == "__main__":
    from solver.parallel import abort_on_error

    abort_on_error()
    sys.exit(main())
