"""LightningModule for Havaei et al.'s patch CNNs (LocalPath, GlobalPath, TwoPath, Average, cascades)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from brats_lightning.data.contract import PatchData, SegmentationData
from brats_lightning.errors import CheckpointError, ConfigError
from brats_lightning.files import read_checkpoint
from brats_lightning.inference.volume import InputPadding
from brats_lightning.modules.options import PatchOptions
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.nets import patch_net_class
from brats_lightning.nets.cascade import CascadeCNN
from brats_lightning.nets.twopath import PatchCNN, set_output_bias_

__all__ = ["PatchCNNModule", "load_patch_net"]


def load_patch_net(
    path: str | Path,
    expect_arch: str | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    into: PatchCNN | None = None,
) -> tuple[PatchCNN, dict]:
    """Rebuild a trained patch CNN from a Lightning checkpoint of :class:`PatchCNNModule`.

    Checkpoints hold plain hyper-parameters and tensors; they load with ``weights_only=True``.

    Args:
        path: the checkpoint.
        expect_arch: the architecture it must hold (``localpath``, ``globalpath``, ``twopath``, ...).
        in_channels: the input channels the net must take.
        num_classes: the classes the net must give.
        into: load the weights into this net instead of building a new one.

    Raises:
        CheckpointError: unreadable, not a patch-CNN checkpoint, not of the expected architecture or size.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, "stage checkpoint")
    hp = ckpt.get("hyper_parameters") or {}
    arch = hp.get("arch")
    if arch not in PatchCNN.registry:
        raise CheckpointError(f"{path}: not a patch CNN checkpoint (arch={arch!r}; known: {sorted(PatchCNN.registry)})")
    if expect_arch is not None and arch != expect_arch:
        raise CheckpointError(f"{path}: holds a {arch} CNN, expected {expect_arch}")
    for name, want in (("in_channels", in_channels), ("num_classes", num_classes)):
        if want is not None and hp.get(name) != want:
            raise CheckpointError(f"{path}: the {arch} CNN has {name}={hp.get(name)}, this model needs {want}")
    net = (
        into
        if into is not None
        else PatchCNN.registry[arch].build(
            hp["in_channels"],
            hp["num_classes"],
            hp.get("dropout", 0.5),
            hp.get("k", 2),
            first_stage_dropout=hp.get("first_stage_dropout", False),
        )
    )
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit a {arch} CNN: {str(e).splitlines()[-1].strip()}") from e
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
        arch: a registered patch CNN (:class:`~brats_lightning.nets.twopath.PatchCNN`): ``localpath``,
            ``globalpath``, ``twopath``, ``average``, ``input_cascade``, ``local_cascade``, ``mf_cascade``.
        in_channels: input channels (from the data config).
        num_classes: classes (from the label convention).
        patch_size: training patch side; must be the net's (33).
        dropout: dropout probability on the last hidden layer.
        k: Maxout feature maps per output map.
        lr: the initial learning rate (Havaei et al.: 0.005).
        lr_schedule: how it decays (see above).
        lr_decay: the decay factor.
        lr_decay_epochs: epochs over which it decays.
        momentum: the initial momentum (0.5).
        final_momentum: the momentum reached (0.9).
        momentum_epochs: epochs over which it rises.
        l1: L1 weight on the kernels.
        l2: L2 weight on the kernels.
        max_norm: bound on each kernel's L2 norm (``None``: no bound).
        local_ckpt: checkpoint of a LocalPathCNN (``arch=average``).
        global_ckpt: checkpoint of a GlobalPathCNN (``arch=average``).
        first_stage_ckpt: checkpoint of the trained TwoPathCNN that a cascade freezes as its first stage.
        first_stage_cache: cascades: precompute the frozen first stage's output over every training
            slice once and sample 33x33 patches with the aligned map (exactly what running it on the
            larger patch gives, much faster); ``False`` samples the larger patch and runs the first
            stage on every batch (then ``data.patch_size`` must be the cascade's 65/56/53).
        first_stage_dropout: MFCascadeCNN: also drop out the first stage's probabilities where they
            join the last hidden layer (off: they are an input of the output layer, not hidden units).
        convention: label convention (regions of the metrics).
        inference_batch_size: slices per forward pass at inference.
        test_hd95: compute HD95 at test time.
        channels_last: run the net in channels_last memory format.
        lesion_metrics: also compute the lesion-wise metrics at test time.
        postprocess: the clean-up of test predictions (Havaei et al. Sec. 4).
        name: the method's name in tables and reports.
        compile: run the net through ``torch.compile`` (inductor) in training and inference.
    """

    options_schema = PatchOptions

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
        first_stage_ckpt: str | None = None,
        first_stage_cache: bool = True,
        first_stage_dropout: bool = False,
        convention: str = "brats2017",
        inference_batch_size: int = 4,
        test_hd95: bool = True,
        channels_last: bool = True,
        lesion_metrics: bool = False,
        postprocess: dict | None = None,
        name: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(convention, inference_batch_size, test_hd95, channels_last, lesion_metrics, postprocess, name)
        self.save_hyperparameters()
        self.check_options()
        self.use_compile = bool(compile)
        try:
            net_class = patch_net_class(arch)
        except KeyError as e:
            raise ConfigError(f"model.arch: {e.args[0]}") from None
        if lr_schedule not in ("linear", "exponential", "constant"):
            raise ConfigError(f"lr_schedule must be linear, exponential or constant, got {lr_schedule!r}")
        # The nets are built here; stage weights (a cascade's first stage, AverageCNN's two nets) are
        # read from their checkpoints in setup(), so that rebuilding a trained model from its own
        # checkpoint never reads other files.
        self.net: PatchCNN = net_class.build(
            in_channels, num_classes, dropout, k, first_stage_dropout=first_stage_dropout
        )
        self._set_layout()
        self._stages_ready = False  # stage weights in place (read from their checkpoints, or restored)
        want = self.train_patch_size
        if patch_size != want:
            hint = " (or model.first_stage_cache=false with the larger patch)" if self.is_cascade else ""
            raise ConfigError(f"patch_size={patch_size} but {arch} trains on {want}x{want} patches{hint}")

    @property
    def is_cascade(self) -> bool:
        return isinstance(self.net, CascadeCNN)

    @property
    def train_patch_size(self) -> int:
        """Side of the image patches the data module must sample."""
        if self.is_cascade and self.hp.first_stage_cache:
            return 33
        return self.net.patch_size

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._stages_ready = True  # the state dict holds every stage

    # -- training ----------------------------------------------------------------------------

    def stage_checkpoints(self) -> dict[str, str | None]:
        """The checkpoints this model's frozen stages come from (config key -> path)."""
        return {f"model.{key}": self.hp.get(key) for key in self.net.stage_nets()}

    def preflight(self, datamodule: object | None = None) -> None:
        """Read the stage checkpoints (given, readable, the right nets) into the frozen stages, once.

        Called by ``train()`` before any data is prepared, and by :meth:`setup` otherwise.

        Raises:
            ConfigError: a stage checkpoint is not given.
            CheckpointError: it cannot be read or holds another net.
        """
        if self._stages_ready:
            return
        missing = [k for k, v in self.stage_checkpoints().items() if not v]
        if missing:
            raise ConfigError(f"{self.hp.arch} needs {' and '.join(missing)} (trained checkpoints)")
        self._load_stages()
        self._stages_ready = True

    def _load_stages(self) -> None:
        hp = self.hp
        for key, sub in self.net.stage_nets().items():
            load_patch_net(hp[key], sub.arch, hp.in_channels, hp.num_classes, into=sub)

    def setup(self, stage: str) -> None:
        resuming = getattr(self.trainer, "ckpt_path", None) is not None
        if not resuming:
            self.preflight()
        if stage != "fit" or any(self.net.output is sub.output for sub in self.net.stage_nets().values()):
            return  # AverageCNN: its output layer is a trained stage's
        dm = getattr(self.trainer, "datamodule", None)
        if not resuming and isinstance(dm, SegmentationData):
            set_output_bias_(self.net.output, dm.label_frequencies())

    def on_fit_start(self) -> None:
        # After the module is on its device, before the first training loader is built.
        dm = getattr(self.trainer, "datamodule", None)
        if self.is_cascade and self.hp.first_stage_cache:
            if not isinstance(dm, PatchData):
                raise ConfigError(
                    f"{self.hp.arch} with model.first_stage_cache=true trains from a data module that samples "
                    "patches (brats_lightning.data.contract.PatchData)"
                )
            if getattr(dm, "dense_size", 1) > 1:
                raise ConfigError("data.dense_size > 1 trains the single nets densely; cascades train per patch")
            self.attach_first_stage(dm)

    def attach_first_stage(self, datamodule: PatchData) -> None:
        """Have the data module cache this cascade's first-stage maps (once, on disk) and sample with them.

        The data side owns the cache (files shared by the ranks, keyed by the first stage's weights);
        the model supplies the function.
        """
        net: CascadeCNN = self.net  # type: ignore[assignment]
        first = net.first.eval()
        weights = b"".join(t.detach().cpu().float().numpy().tobytes() for t in first.state_dict().values())
        bf16 = self._trainer is not None and "bf16" in str(self.trainer.precision)

        def first_stage(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                return net.first_stage_map(self.layout(x), margin=16).float()

        datamodule.cache_first_stage(
            first_stage,
            hashlib.sha1(weights + (b"bf16" if bf16 else b"")).hexdigest()[:12],
            margin=16,
            size=net.aux_size,
            before=net.aux_before,
            device=self.device,
            batch_slices=self.inference_batch_size,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.layout(x))

    def kernels(self) -> list[nn.Parameter]:
        """Convolution kernels (the weights that L1/L2 and max-norm act on)."""
        return [m.weight for m in self.net.modules() if isinstance(m, nn.Conv2d)]  # type: ignore[misc]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        weights = None
        if batch[-1].is_floating_point():  # dense windows: (windows, [maps,] labels, pixel weights)
            *batch, weights = batch  # type: ignore[assignment]
        if len(batch) == 3:  # cascade with cached first-stage maps: (33x33 patches, aligned maps, labels)
            x, aux, y = batch
            assert isinstance(self.net, CascadeCNN)
            logits = self.net.second_stage(self.layout(x), self.layout(aux))
        else:
            x, y = batch
            logits = self.run_net(x)
        if weights is None:
            nll = F.cross_entropy(logits[:, :, 0, 0].float(), y)
        else:  # every labelled pixel of a window; each window's weights sum to 1
            ce = F.cross_entropy(logits.float(), y.clamp_min(0), reduction="none")
            nll = (ce * weights).sum() / x.shape[0]
        loss = nll
        ws = [w for w in self.kernels() if w.requires_grad]
        if self.hp.l1:
            loss = loss + self.hp.l1 * sum(w.abs().sum() for w in ws)
        if self.hp.l2:
            loss = loss + self.hp.l2 * sum(w.pow(2).sum() for w in ws)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("train/nll", nll, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        max_norm = self.hp.max_norm
        if max_norm:
            with torch.no_grad():
                for w in self.kernels():
                    if w.requires_grad:
                        w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=max_norm))

    def momentum_at(self, epoch: int) -> float:
        """Momentum of ``epoch`` (linear from ``momentum`` to ``final_momentum``)."""
        hp = self.hp
        t = min(1.0, epoch / max(1, hp.momentum_epochs))
        return hp.momentum + (hp.final_momentum - hp.momentum) * t

    def on_train_epoch_start(self) -> None:
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["momentum"] = self.momentum_at(self.current_epoch)
        self.log("train/momentum", self.momentum_at(self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]  # a cascade's first stage is frozen
        opt = torch.optim.SGD(params, lr=self.hp.lr, momentum=self.hp.momentum)
        hp, schedulers = self.hp, torch.optim.lr_scheduler
        if hp.lr_schedule == "linear":  # Pylearn2's LinearDecayOverEpoch
            sched: schedulers.LRScheduler = schedulers.LinearLR(
                opt, start_factor=1.0, end_factor=hp.lr_decay, total_iters=max(1, hp.lr_decay_epochs)
            )
        elif hp.lr_schedule == "exponential":
            sched = schedulers.ExponentialLR(opt, gamma=hp.lr_decay)
        else:
            sched = schedulers.ConstantLR(opt, factor=1.0, total_iters=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- inference ---------------------------------------------------------------------------

    @property
    def input_padding(self) -> InputPadding:
        """A slice padded by the context of one output pixel goes through the net once (Havaei Sec. 4)."""
        if isinstance(self.net, CascadeCNN):
            before, after = self.net.first_pad
            return InputPadding(before=before, after=after)
        return InputPadding(before=self.net.margin, after=self.net.margin)
