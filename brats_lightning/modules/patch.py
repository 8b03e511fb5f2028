"""LightningModule for Havaei et al.'s patch CNNs (LocalPath, GlobalPath, TwoPath, Average)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.nets.twopath import (
    AverageCNN,
    GlobalPathCNN,
    LocalPathCNN,
    PatchCNN,
    TwoPathCNN,
    set_output_bias_,
)

__all__ = ["ARCHS", "PatchCNNModule", "build_patch_net", "load_patch_net"]

ARCHS = ("localpath", "globalpath", "twopath", "average")


def build_patch_net(arch: str, in_channels: int, num_classes: int, dropout: float = 0.5, k: int = 2) -> PatchCNN:
    """A freshly initialised LocalPathCNN, GlobalPathCNN or TwoPathCNN."""
    nets = {"localpath": LocalPathCNN, "globalpath": GlobalPathCNN, "twopath": TwoPathCNN}
    if arch not in nets:
        raise ValueError(f"unknown patch CNN {arch!r}; expected one of {sorted(nets)}")
    return nets[arch](in_channels, num_classes, dropout, k)


def load_patch_net(path: str | Path, expect_arch: str | None = None) -> tuple[PatchCNN, dict]:
    """Rebuild a trained patch CNN from a Lightning checkpoint of :class:`PatchCNNModule`.

    Checkpoints hold plain hyper-parameters and tensors; they load with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a patch-CNN checkpoint, or not of the expected architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{path}: cannot read the checkpoint ({e})") from e
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    arch = hp.get("arch")
    if arch not in ("localpath", "globalpath", "twopath"):
        raise ValueError(f"{path}: not a LocalPath/GlobalPath/TwoPath CNN checkpoint (arch={arch!r})")
    if expect_arch is not None and arch != expect_arch:
        raise ValueError(f"{path}: holds a {arch} CNN, expected {expect_arch}")
    net = build_patch_net(arch, hp["in_channels"], hp["num_classes"], hp.get("dropout", 0.5), hp.get("k", 2))
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit a {arch} CNN: {e}") from e
    return net, hp


class PatchCNNModule(SegmentationModule):
    """Trains a patch CNN as Havaei et al. Sec. 3.2 and 4 describe.

    * Patches ``in_channels x 33 x 33`` labelled by their centre pixel; categorical cross entropy
      plus ``l1 * sum|W| + l2 * sum W^2`` over the convolution kernels.
    * SGD with momentum rising linearly from ``momentum`` to ``final_momentum`` over
      ``momentum_epochs`` epochs (Pylearn2's ``MomentumAdjustor``, which the authors used).
    * Learning rate ``lr`` (0.005), "decreased by a factor at every epoch ... decay factor 10^-1".
      We read this as Pylearn2's ``LinearDecayOverEpoch``: the rate falls linearly at every epoch
      to ``lr * lr_decay`` after ``lr_decay_epochs`` epochs, then stays (``lr_schedule="linear"``).
      Multiplying the rate by 0.1 every epoch would leave 5e-7 after four epochs, which could not
      have trained the models; that literal reading is available as ``lr_schedule="exponential"``
      (rate times ``lr_decay`` each epoch), and ``"constant"`` switches decay off.
    * After every optimiser step each kernel's L2 norm is bounded by ``max_norm`` (Pylearn2's
      ``max_kernel_norm``; the paper "bounded the absolute value of the kernel weights" without
      giving the bound).
    * Kernels ~ U(-0.005, 0.005), zero biases, output biases = log of the training label
      frequencies (set when training starts from scratch).
    * Inference: a slice padded by 16 pixels goes through the net once (fully convolutional).

    Args:
        arch: ``localpath``, ``globalpath``, ``twopath`` or ``average``.
        in_channels: input channels (from the data config).
        num_classes: classes (from the label convention).
        patch_size: training patch side; must be the net's (33).
        dropout: dropout probability on the last hidden layer.
        k: Maxout feature maps per output map.
        lr, lr_schedule, lr_decay, lr_decay_epochs: learning-rate schedule (see above).
        momentum, final_momentum, momentum_epochs: momentum schedule.
        l1, l2: regularisation weights on kernels.
        max_norm: bound on each kernel's L2 norm (``None``: no bound).
        local_ckpt, global_ckpt: checkpoints of a LocalPathCNN and a GlobalPathCNN (``arch=average``).
        convention, inference_batch_size, test_hd95: see :class:`SegmentationModule`.
    """

    def __init__(
        self,
        arch: str = "twopath",
        in_channels: int = 4,
        num_classes: int = 4,
        patch_size: int = 33,
        dropout: float = 0.5,
        k: int = 2,
        lr: float = 0.005,
        lr_schedule: str = "linear",
        lr_decay: float = 0.1,
        lr_decay_epochs: int = 10,
        momentum: float = 0.5,
        final_momentum: float = 0.9,
        momentum_epochs: int = 10,
        l1: float = 1e-6,
        l2: float = 1e-5,
        max_norm: float | None = 1.9365,
        local_ckpt: str | None = None,
        global_ckpt: str | None = None,
        convention: str = "brats2017",
        inference_batch_size: int = 4,
        test_hd95: bool = True,
    ) -> None:
        super().__init__(convention, inference_batch_size, test_hd95)
        self.save_hyperparameters()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
        if lr_schedule not in ("linear", "exponential", "constant"):
            raise ValueError(f"lr_schedule must be linear, exponential or constant, got {lr_schedule!r}")
        if arch == "average":
            if not local_ckpt or not global_ckpt:
                raise ValueError("arch=average needs model.local_ckpt and model.global_ckpt (trained checkpoints)")
            local, _ = load_patch_net(local_ckpt, "localpath")
            glob, _ = load_patch_net(global_ckpt, "globalpath")
            self.net: PatchCNN = AverageCNN(local, glob)
        else:
            self.net = build_patch_net(arch, in_channels, num_classes, dropout, k)
        if patch_size != self.net.patch_size:
            raise ValueError(
                f"patch_size={patch_size} but {arch} takes {self.net.patch_size}x{self.net.patch_size} patches"
            )

    # -- training ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.hparams.arch == "average":
            return
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(self.trainer, "ckpt_path", None) is None and dm is not None and hasattr(dm, "label_frequencies"):
            set_output_bias_(self.net.output, dm.label_frequencies())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def kernels(self) -> list[nn.Parameter]:
        """Convolution kernels (the weights that L1/L2 and max-norm act on)."""
        return [m.weight for m in self.net.modules() if isinstance(m, nn.Conv2d)]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)[:, :, 0, 0]
        nll = F.cross_entropy(logits, y)
        loss = nll
        ws = [w for w in self.kernels() if w.requires_grad]
        if self.hparams.l1:
            loss = loss + self.hparams.l1 * sum(w.abs().sum() for w in ws)
        if self.hparams.l2:
            loss = loss + self.hparams.l2 * sum(w.pow(2).sum() for w in ws)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("train/nll", nll, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        max_norm = self.hparams.max_norm
        if max_norm:
            with torch.no_grad():
                for w in self.kernels():
                    if w.requires_grad:
                        w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=max_norm))

    def momentum_at(self, epoch: int) -> float:
        """Momentum of ``epoch`` (linear from ``momentum`` to ``final_momentum``)."""
        hp = self.hparams
        t = min(1.0, epoch / max(1, hp.momentum_epochs))
        return hp.momentum + (hp.final_momentum - hp.momentum) * t

    def lr_factor(self, epoch: int) -> float:
        """Learning-rate multiplier of ``epoch``."""
        hp = self.hparams
        if hp.lr_schedule == "linear":
            return 1.0 - (1.0 - hp.lr_decay) * min(1.0, epoch / max(1, hp.lr_decay_epochs))
        if hp.lr_schedule == "exponential":
            return hp.lr_decay**epoch
        return 1.0

    def on_train_epoch_start(self) -> None:
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["momentum"] = self.momentum_at(self.current_epoch)
        self.log("train/momentum", self.momentum_at(self.current_epoch), on_step=False, on_epoch=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.net.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: self.lr_factor(epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- inference ---------------------------------------------------------------------------

    def predict_slices(self, x: torch.Tensor) -> torch.Tensor:
        m = self.net.margin
        return torch.softmax(self.net(F.pad(x, (m, m, m, m))), dim=1)
