"""CIFAR-10 with a ResNet-18 in SAM's everyday recipe (Foret et al. 2021): BatchNorm, minibatches of
128, random crop and flip, SGD with momentum 0.9, weight decay 5e-4, a cosine schedule, rho 0.05.

The model is :class:`samedge.models.resnet.ResNet` (the CIFAR variant: 3 x 3 stem, no max-pool;
11.2M parameters at width 64; ``norm="none"`` is the width-matched plain ResNet without BatchNorm).
The model has state, BatchNorm's running statistics, so the task is built with
:func:`samedge.tasks.stateful_classification`: a step normalises with its batch's statistics and
updates the running ones (only its unperturbed pass, for SAM); the measurement's Hessian is that of
``params -> loss`` with the statistics of the batch measured (train mode) and dropout off, or with
the running statistics as constants (``--measure-mode eval``), and never changes them. Each check
point measures the step's minibatch (unaugmented) and, with ``--measure-full-batch``, the fixed
measurement set (the first ``measure_set`` training images) as ``lambda_max_full`` / ``ratio_full``.
Preprocessing: per-channel standardisation (:func:`samedge.data.cifar10.standardize`); loss:
softmax cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

from samedge.data import cifar10 as cifar_data
from samedge.errors import ConfigError
from samedge.tasks import Preset, Task, check_batch_size, stateful_classification

NORMS = ("batch", "none")


@dataclass(frozen=True)
class Config:
    n_train: int = 50_000  # training images (the first ones of data_batch_1..5)
    n_test: int | None = None  # test images for the test cadence; None = the whole test_batch
    width: int = 64  # channels of the first stage (64: ResNet-18's 11.2M parameters)
    norm: str = "batch"  # "batch" (BatchNorm) or "none" (the width-matched plain ResNet)
    dropout: float = 0.0  # dropout rate before the read-out (ResNet-18 has none)
    bn_momentum: float = 0.9  # running statistics s' = m s + (1 - m) (batch's)
    batch_size: int = 128  # minibatch (0: full batch)
    augment: bool = True  # random crop (4-pixel padding) and horizontal flip of each training minibatch
    measure_augmented: bool = False  # measure the step's minibatch with its augmentation
    measure_set: int = 5000  # the fixed measurement set (lambda_max_full): the first images (0 or > n_train: all)

    def validate(self):
        for name in ("n_train", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"cifar10-resnet {name} must be a positive integer, got {value!r}")
        if self.n_test is not None and (not isinstance(self.n_test, int) or self.n_test < 1):
            raise ConfigError(f"cifar10-resnet n_test must be a positive integer or None, got {self.n_test!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"cifar10-resnet norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ConfigError(f"cifar10-resnet dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.bn_momentum, (int, float)) and 0 <= self.bn_momentum < 1):
            raise ConfigError(f"cifar10-resnet bn_momentum must be in [0, 1), got {self.bn_momentum!r}")
        for name in ("augment", "measure_augmented"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"cifar10-resnet {name} must be true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.measure_set, int) and not isinstance(self.measure_set, bool) and self.measure_set >= 0):
            raise ConfigError(f"cifar10-resnet measure_set must be an integer >= 0, got {self.measure_set!r}")
        check_batch_size("cifar10-resnet", self.batch_size, self.n_train)


# Foret et al.'s recipe for the optimizers that have its settings: momentum 0.9, weight decay 5e-4
# (coupled, on the weights: samedge.optimizers), rho 0.05.
RECIPE = {"momentum": 0.9, "weight_decay": 5e-4, "rho": 0.05}

PRESETS = {
    "quick": Preset(
        name="quick",
        description="a width-8 ResNet-18 with BatchNorm on 2,000 CIFAR-10 images, minibatches of 128, crop + flip",
        task=dict(n_train=2000, n_test=1000, width=8, batch_size=128, measure_set=500),
        steps=400,
        measure_every=20,
        eval_every=100,
        lr={"*": 0.1},
        grid_lr=(0.1,),
        grid={"rho": (0.0, 0.05, 0.1)},
        hparams=RECIPE,
        run=dict(optimizer="sam_momentum", measure_sam_point=False, schedule="cosine"),
    ),
    # Foret et al. (2021), ResNet-18 on CIFAR-10: 200 epochs of 391 minibatches of 128 (78,200 steps), lr
    # 0.1 with a cosine schedule, momentum 0.9, weight decay 5e-4, rho 0.05, crop + flip. Measured once
    # an epoch on the step's minibatch and on the first 5,000 training images (in chunks of 250). A GPU
    # job: on the 2-core CPU VM (23 GB) its first measurement in chunks of 1,000 asked for a 49.8 GB
    # buffer (the CPU's patch-product convolutions hold 9 shifted copies of each activation) and ran out
    # of memory after a 2 min 20 s compile.
    "paper": Preset(
        name="paper",
        description="Foret et al.'s recipe: ResNet-18 (width 64) on the full CIFAR-10, 200 epochs, cosine",
        task=dict(n_train=50_000, n_test=None, width=64, batch_size=128, measure_set=5000),
        steps=78_200,
        measure_every=391,
        eval_every=3910,
        lr={"*": 0.1},
        grid_lr=(0.1,),
        grid={"rho": (0.0, 0.05, 0.1)},
        hparams=RECIPE,
        run=dict(optimizer="sam_momentum", measure_sam_point=False, schedule="cosine", measure_full_batch=True,
                 chunk_size=250, checkpoint_every=3910),
    ),
}


def build(config: Config, *, data_dir=None, seed: int = 0, allow_fallback: bool = False) -> Task:
    """The task on the first ``n_train`` training images (see the module docstring); ``allow_fallback``
    is accepted for the common signature, but CIFAR-10 has no substitute data set."""
    from samedge.models.resnet import ResNet

    config.validate()
    raw = cifar_data.load(data_dir, n_train=config.n_train, n_test=config.n_test)
    train, test = cifar_data.standardize(raw)
    model = ResNet(width=config.width, num_outputs=cifar_data.NUM_CLASSES, norm=config.norm,
                   bn_momentum=config.bn_momentum, dropout=config.dropout)
    return stateful_classification("cifar10-resnet", config, model, train, test, source=raw.source,
                                   batch_size=config.batch_size, seed=seed, augment=config.augment,
                                   measure_augmented=config.measure_augmented,
                                   measure_set=min(config.measure_set, config.n_train))
