"""DP-SGD with Opacus, wired into Lightning's own loop as a callback.

Lightning keeps the loop; this callback makes each piece of it private:

* the training batches are Poisson-sampled (:class:`~finexp.privacy.sampling.PoissonBatchSampler`, which the
  datamodule uses when it is given :meth:`DPSGD.batch_sampler`);
* Opacus' per-sample gradient hooks are attached to the LightningModule's trainable layers (the module itself is not
  wrapped, so checkpoints keep their keys and load in ``finexp-eval`` as usual);
* the optimizer Lightning built is wrapped in Opacus' ``DPOptimizer``: each row's gradient is clipped to
  ``max_grad_norm``, Gaussian noise of ``noise_multiplier * max_grad_norm`` is added, and the accountant records the
  step;
* the accountant's ε is logged every epoch (``privacy/epsilon``) and :meth:`DPSGD.report` gives the final (ε, δ).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn

from finexp.privacy.errors import PrivacyError
from finexp.privacy.sampling import PoissonBatchSampler

log = logging.getLogger("finexp")

ACCOUNTANTS = ("rdp", "prv", "gdp")


class DPSGD(pl.Callback):
    """Differentially private training (per-sample clipping + Gaussian noise + Poisson sampling) with Opacus.

    Give either ``noise_multiplier`` or a target ``epsilon``; with ``epsilon`` the noise is solved, at the start of
    fit, for the planned number of steps (``trainer.estimated_stepping_batches``) and the actual sampling rate.
    ``epsilon=inf`` trains without noise (clipping and Poisson sampling only): the non-private end of a sweep.

    The LightningModule's ``forward(input_ids, attention_mask)`` is called once on two training rows at the start of
    fit, to find trainable parameters the forward pass never reaches (frozen, with a log line) and layers whose
    per-row gradients cannot be computed (an error naming them).

    Args:
        max_grad_norm: each row's gradient is clipped to this L2 norm (the sensitivity of one step).
        noise_multiplier: noise standard deviation relative to ``max_grad_norm``; None: solve it from ``epsilon``.
        epsilon: the target ε over the whole run; None when ``noise_multiplier`` is given.
        delta: the target δ; None: 1 / (number of training rows).
        accountant: Opacus accountant: ``rdp`` (Rényi DP), ``prv`` (privacy random variables, tighter) or ``gdp``.
        secure_mode: draw noise with a cryptographically safe generator (slower; for a real release).
    """

    def __init__(
        self,
        max_grad_norm: float = 1.0,
        noise_multiplier: float | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
        accountant: str = "rdp",
        secure_mode: bool = False,
    ) -> None:
        if (noise_multiplier is None) == (epsilon is None):
            raise PrivacyError("DP-SGD needs exactly one of privacy.noise_multiplier and privacy.epsilon")
        if max_grad_norm <= 0:
            raise PrivacyError(f"privacy.max_grad_norm={max_grad_norm} is not allowed: must be > 0")
        if accountant not in ACCOUNTANTS:
            raise PrivacyError(f"privacy.accountant={accountant!r} is not allowed: choose one of {ACCOUNTANTS}")
        self.max_grad_norm = max_grad_norm
        self.noise_multiplier = noise_multiplier
        self.target_epsilon = epsilon
        self.delta = delta
        self.accountant_name = accountant
        self.accountant = create_accountant(accountant)
        self.secure_mode = secure_mode
        self.sample_rate: float | None = None
        self.num_rows: int | None = None
        self.planned_steps: int | None = None
        self._grad_sampler: GradSampleModule | None = None
        self._handles: list[Any] = []
        self._batch_size = 0
        self._fit_report: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------------------------
    # What the datamodule and the records need
    # ----------------------------------------------------------------------------------------------------------
    def batch_sampler(self, num_rows: int, batch_size: int, seed: int) -> PoissonBatchSampler:
        """The training batch sampler DP-SGD's accounting assumes (a datamodule hook)."""
        return PoissonBatchSampler(num_rows, batch_size, seed)

    @property
    def target_delta(self) -> float:
        if self.delta is not None:
            return self.delta
        if self.num_rows is None:
            raise PrivacyError("δ defaults to 1/N, but the number of training rows is not known before fit")
        return 1.0 / self.num_rows

    @property
    def steps(self) -> int:
        return sum(int(entry[-1]) for entry in self.accountant.history)

    def epsilon(self) -> float:
        """ε spent so far at :attr:`target_delta`, as the accountant computes it."""
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(delta=self.target_delta))

    def report(self) -> dict[str, Any]:
        """The privacy spent, for ``metrics.json`` (before fit: only the settings).

        ``privacy/epsilon`` covers every step the fit took. Validating or testing the best checkpoint restores the
        accountant as it was at that checkpoint; when that differs, ``privacy/epsilon_best_checkpoint`` says what the
        chosen weights spent (the choice is made on validation data, not on training rows).
        """
        if self.sample_rate is None:
            return {"privacy/target_epsilon": self.target_epsilon, "privacy/max_grad_norm": float(self.max_grad_norm)}
        current = self._current_report()
        if self._fit_report is None:
            return current
        extra = {}
        if current["privacy/steps"] != self._fit_report["privacy/steps"]:
            extra = {"privacy/epsilon_best_checkpoint": current["privacy/epsilon"]}
        return {**self._fit_report, **extra}

    def _current_report(self) -> dict[str, Any]:
        return {
            "privacy/epsilon": self.epsilon(),
            "privacy/delta": self.target_delta,
            "privacy/noise_multiplier": float(self.noise_multiplier) if self.noise_multiplier is not None else None,
            "privacy/max_grad_norm": float(self.max_grad_norm),
            "privacy/sample_rate": self.sample_rate,
            "privacy/steps": self.steps,
            "privacy/accountant": self.accountant_name,
        }

    # ----------------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ----------------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_trainer(trainer, pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.fit_loop.setup_data()  # the train dataloader, now (Lightning builds it lazily); as Opacus' example
        self.planned_steps = int(trainer.estimated_stepping_batches)
        loader = trainer.train_dataloader
        sampler = getattr(loader, "batch_sampler", None)
        if not isinstance(sampler, PoissonBatchSampler):
            raise PrivacyError(
                f"DP-SGD needs Poisson-sampled training batches (got {type(sampler).__name__}): give the datamodule "
                "train_batch_sampler=DPSGD.batch_sampler (finexp does this for privacy=dp_sgd)"
            )
        self.sample_rate, self.num_rows, self._batch_size = sampler.sample_rate, sampler.num_rows, sampler.batch_size
        if self.noise_multiplier is None:
            self.noise_multiplier = self._solve_noise()
        check_layers(pl_module)
        self._attach(pl_module, probe=loader.collate_fn([loader.dataset[i] for i in range(min(2, self.num_rows))]))
        optimizers = trainer.strategy.optimizers
        if len(optimizers) != 1:
            raise PrivacyError(f"DP-SGD wraps exactly one optimizer; the module configured {len(optimizers)}")
        private = DPOptimizer(
            optimizers[0],
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self._batch_size,
            loss_reduction="mean",
            secure_mode=self.secure_mode,
        )
        private.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        trainer.strategy.optimizers = [private]  # the LR scheduler keeps working: DPOptimizer shares param_groups
        log.info(
            "DP-SGD: noise multiplier %.4f, max grad norm %g, sample rate %.5f, %d planned steps, δ=%.3g",
            self.noise_multiplier,
            self.max_grad_norm,
            self.sample_rate,
            self.planned_steps,
            self.target_delta,
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # An empty Poisson batch (the module's training_step returned None) still takes a step of pure noise:
        # skipping it would reveal that no row was drawn, and the accountant counts it either way.
        if isinstance(optimizer, DPOptimizer) and all(p.grad_sample is None for p in optimizer.params):
            for p in optimizer.params:
                p.grad_sample = p.new_zeros((0, *p.shape))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("privacy/epsilon", self.epsilon(), on_epoch=True, on_step=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_report = self._current_report()
        self._detach(pl_module)
        optimizers = trainer.strategy.optimizers
        if optimizers and isinstance(optimizers[0], DPOptimizer):
            trainer.strategy.optimizers = [optimizers[0].original_optimizer]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach(pl_module)

    def state_dict(self) -> dict[str, Any]:
        # Plain numbers only (checkpoints load with weights_only=True); a resumed run keeps counting its budget.
        history = [[float(x) for x in entry] for entry in self.accountant.history]
        return {"history": history, "noise_multiplier": self.noise_multiplier}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state_dict["history"]]
        self.noise_multiplier = state_dict["noise_multiplier"]

    # ----------------------------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------------------------
    def _solve_noise(self) -> float:
        assert self.target_epsilon is not None and self.sample_rate is not None
        if math.isinf(self.target_epsilon):
            return 0.0
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=self.target_epsilon,
                    target_delta=self.target_delta,
                    sample_rate=self.sample_rate,
                    steps=self.planned_steps,
                    accountant=self.accountant_name,
                    epsilon_tolerance=0.01,
                )
            )
        except ValueError as err:  # Opacus: the budget cannot be reached with any noise it tries
            raise PrivacyError(
                f"privacy.epsilon={self.target_epsilon} cannot be reached at δ={self.target_delta:.3g} over "
                f"{self.planned_steps} steps at sample rate {self.sample_rate:.4f}: {err}"
            ) from err

    def _attach(self, pl_module: pl.LightningModule, probe: dict[str, torch.Tensor]) -> None:
        self._detach(pl_module)
        # Opacus hooks every trainable layer, embeddings included, whose inputs (token ids) need no gradient; torch
        # then notes that the backward hook sees output gradients only, which is all Opacus reads.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        self._handles = _broadcast_inputs_per_row(pl_module)
        self._grad_sampler = GradSampleModule(pl_module, batch_first=True, loss_reduction="mean", strict=False)
        pl_module.zero_grad(set_to_none=True)
        logits = pl_module(probe["input_ids"], probe["attention_mask"])
        logits.float().sum().backward()
        unused = [n for n, p in pl_module.named_parameters() if p.requires_grad and p.grad is None]
        rows = len(probe["input_ids"])
        shared = [
            n
            for n, p in pl_module.named_parameters()
            if p.requires_grad and p.grad is not None and getattr(p, "grad_sample", None) is None
        ]
        shared += [
            n
            for n, p in pl_module.named_parameters()
            if getattr(p, "grad_sample", None) is not None and p.grad_sample.shape[0] != rows
        ]
        for p in pl_module.parameters():
            p.grad, p.grad_sample = None, None
        if shared:
            self._detach(pl_module)
            raise PrivacyError(
                "Opacus cannot compute per-row gradients for these trainable parameters (their layer mixes rows "
                f"of the batch or is not hooked): {', '.join(shared)}; freeze them (adapter=freeze, a LoRA/top-layer "
                "adapter) or train without DP-SGD"
            )
        if unused:
            for name, p in pl_module.named_parameters():
                if name in unused:
                    p.requires_grad_(False)
            log.warning(
                "DP-SGD: froze %d trainable parameter(s) the forward pass never uses (no per-row gradient): %s",
                len(unused),
                ", ".join(unused),
            )

    def _detach(self, pl_module: pl.LightningModule) -> None:
        if self._grad_sampler is not None:
            self._grad_sampler.remove_hooks()
            self._grad_sampler = None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for p in pl_module.parameters():
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)


def check_trainer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Reject trainer settings under which DP-SGD's clipping or accounting would silently be wrong."""
    if trainer.gradient_clip_val:
        raise PrivacyError(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} is not allowed with DP-SGD: each row's gradient "
            "is clipped to privacy.max_grad_norm instead; set trainer.gradient_clip_val=null"
        )
    if trainer.accumulate_grad_batches != 1:
        raise PrivacyError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} is not allowed with DP-SGD: "
            "the accountant counts one noisy step per batch; raise data.batch_size instead"
        )
    if trainer.world_size > 1:
        raise PrivacyError(f"DP-SGD runs on one device; got {trainer.world_size} (set trainer.devices=1)")
    if not pl_module.automatic_optimization:
        raise PrivacyError("DP-SGD needs Lightning's automatic optimization")


def check_layers(module: nn.Module) -> None:
    """Raise one error naming every trainable layer Opacus cannot make private (BatchNorm, plain LSTM, buffers...)."""
    problems = []
    for name, layer in trainable_modules(module):
        validator = ModuleValidator.VALIDATORS.get(type(layer))
        reasons = [str(e) for e in validator(layer)] if validator is not None else []
        if not reasons and any(True for _ in layer.buffers()):  # Opacus' own check: buffers are state across rows
            reasons.append("a trainable layer with buffers (state shared across rows)")
        if reasons:
            problems.append(f"{name} ({type(layer).__name__}: {reasons[0].split('. ')[0]})")
    if problems:
        raise PrivacyError(
            "DP-SGD cannot train these layers (Opacus rejects them): "
            + "; ".join(problems)
            + "; freeze them or use a model without them"
        )


def _broadcast_inputs_per_row(module: nn.Module) -> list[Any]:
    """Give trainable embeddings one input row per batch row.

    Hugging Face encoders look position embeddings up for a single row of position ids and broadcast the result over
    the batch; Opacus then sees a batch of one and cannot tell the rows apart. Expanding that input to the batch
    gives the same output and a gradient per row.
    """
    state = {"rows": None}

    def remember_rows(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        state["rows"] = None if first is None or first.dim() == 0 else first.shape[0]

    def expand(_module: nn.Module, args: tuple) -> tuple | None:
        rows, ids = state["rows"], args[0]
        if rows is not None and rows != 1 and ids.dim() >= 1 and ids.shape[0] == 1:
            return (ids.expand(rows, *ids.shape[1:]).contiguous(), *args[1:])
        return None

    handles = [module.register_forward_pre_hook(remember_rows, with_kwargs=True)]
    for layer in module.modules():
        if isinstance(layer, nn.Embedding) and layer.weight.requires_grad:
            handles.append(layer.register_forward_pre_hook(expand))
    return handles
