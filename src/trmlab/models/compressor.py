"""Phase 1 of LLM latent reasoning: a weight-tied linear compressor of LLM hidden states, its metrics, and the PCA
baseline it is compared with.

The compressor reduces the *feature* dimension only (seed 001)::

    [B, L, D] --compress--> [B, L, D'] --decompress--> [B, L, D]

with one weight matrix ``W`` of shape ``[D', D]``: ``z = (x - mean) @ W.T (+ b_enc)`` and
``x_hat = z @ W (+ b_dec) + mean``. Without biases (the default) the parameter count is exactly ``D' * D`` — 196,608
for D'=64, D=3072, as in seed 001's table. ``center=True`` adds ``mean``, a fixed buffer (not a parameter) set to the
training tokens' mean: PCA centres the data, and without it a tied map through the origin cannot reach PCA's
error on data whose mean is far from 0 (``tasks/compressor.py`` sets it; docs/compressor.md has the gap).

Metrics (``reconstruction_metrics`` / ``ReconstructionMetrics``), always over real (mask == 1) tokens only:

``mse``                mean over tokens and features of ``(x_hat - x)**2``
``cosine_similarity``  mean over tokens of ``cos(x_hat_t, x_t)``
``relative_error``     ``||x_hat - x|| / ||x||`` with Frobenius norms over all real tokens
``variance_ratio``     ``var(x_hat) / var(x)``: total variance (trace of the covariance over tokens, i.e. the sum of
                       per-feature variances) of the reconstruction over that of the original

``pca_reconstruction(train, test, k)`` is the optimal rank-k (affine, mean-centred) reconstruction fitted on
``train`` and evaluated on held-out ``test`` with the same metrics: no linear compressor of width k can beat it on
the data it was fitted on, so it is the yardstick for the trained compressor.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trmlab.atomic import atomic_directory
from trmlab.errors import TrmError

METRIC_NAMES = ("mse", "cosine_similarity", "relative_error", "variance_ratio")


class DimensionCompressor(nn.Module):
    """Weight-tied linear autoencoder over the last dimension: D -> D' -> D."""

    def __init__(self, d_model: int, d_compressed: int, bias: bool = False, init: str = "orthogonal",
                 center: bool = False):
        super().__init__()
        if int(d_model) <= 0 or int(d_compressed) <= 0:
            raise TrmError(f"compressor dimensions must be positive, got d_model={d_model}, d_compressed={d_compressed}")
        if init not in ("orthogonal", "normal"):
            raise TrmError(f"unknown compressor init {init!r} (use 'orthogonal' or 'normal')")
        self.d_model = int(d_model)
        self.d_compressed = int(d_compressed)
        self.use_bias = bool(bias)
        self.weight = nn.Parameter(torch.empty(self.d_compressed, self.d_model))
        if self.use_bias:
            self.encoder_bias = nn.Parameter(torch.zeros(self.d_compressed))
            self.decoder_bias = nn.Parameter(torch.zeros(self.d_model))
        else:
            self.register_parameter("encoder_bias", None)
            self.register_parameter("decoder_bias", None)
        self.center = bool(center)
        if self.center:  # the data mean, subtracted before compressing and added back after (as PCA does)
            self.register_buffer("mean", torch.zeros(self.d_model))
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "orthogonal") -> None:
        with torch.no_grad():
            if init == "orthogonal":
                # Semi-orthogonal rows: W^T W starts as a projection, so the untrained model is already a sane
                # (random-subspace) reconstruction and the loss starts well below ||x||^2.
                nn.init.orthogonal_(self.weight)
            else:
                nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.d_model))
            if self.use_bias:
                self.encoder_bias.zero_()
                self.decoder_bias.zero_()

    @property
    def compression_ratio(self) -> float:
        return self.d_model / self.d_compressed

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D']"""
        if x.shape[-1] != self.d_model:
            raise TrmError(f"compressor expects hidden size {self.d_model}, got {x.shape[-1]}")
        w = self.weight
        x = x.to(w.dtype)
        if self.center:
            x = x - self.mean
        z = x @ w.t()
        if self.encoder_bias is not None:
            z = z + self.encoder_bias
        return z

    def decompress(self, z: torch.Tensor) -> torch.Tensor:
        """[..., D'] -> [..., D], with the same (tied) weight tensor as ``compress``."""
        if z.shape[-1] != self.d_compressed:
            raise TrmError(f"compressor expects compressed size {self.d_compressed}, got {z.shape[-1]}")
        x_hat = z @ self.weight
        if self.decoder_bias is not None:
            x_hat = x_hat + self.decoder_bias
        if self.center:
            x_hat = x_hat + self.mean
        return x_hat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decompress(self.compress(x))

    def config(self) -> dict:
        return {"d_model": self.d_model, "d_compressed": self.d_compressed, "bias": self.use_bias,
                "center": self.center}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_compressed={self.d_compressed}, bias={self.use_bias}, center={self.center}"


# --------------------------------------------------------------------------------------------------- metrics


def _flatten_masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[..., D] (+ mask [...]) -> [T, D] of the real tokens."""
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return flat
    m = mask.reshape(-1).to(torch.bool)
    if m.shape[0] != flat.shape[0]:
        raise TrmError(f"mask shape {tuple(mask.shape)} does not match states {tuple(x.shape)}")
    return flat[m]


class ReconstructionMetrics:
    """Streaming accumulator of the seed-001 metrics (float64 sums, so batches can be summed across processes).

    ``state()`` is a flat float64 tensor of sufficient statistics; summing the states of several accumulators (e.g.
    with ``accelerator.reduce(..., 'sum')``) and calling ``from_state(...).compute()`` gives the metrics of the union.
    """

    def __init__(self, d_model: int):
        self.d_model = int(d_model)
        self.reset()

    def reset(self) -> None:
        d = self.d_model
        self._scalars = torch.zeros(5, dtype=torch.float64)  # tokens, sq_err, cos_sum, x_sq, xh_sq
        self._sum_x = torch.zeros(d, dtype=torch.float64)
        self._sum_xh = torch.zeros(d, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if x.shape != x_hat.shape:
            raise TrmError(f"reconstruction shape {tuple(x_hat.shape)} != original {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise TrmError(f"metrics were set up for hidden size {self.d_model}, got {x.shape[-1]}")
        # float64 sums on the inputs' device; only the small results move to the CPU
        a = _flatten_masked(x, mask).detach().to(torch.float64)
        b = _flatten_masked(x_hat, mask).detach().to(a.device, torch.float64)
        if a.shape[0] == 0:
            return
        diff = b - a
        na = a.norm(dim=-1)
        nb = b.norm(dim=-1)
        cos = (a * b).sum(-1) / (na * nb).clamp_min(1e-12)
        # two all-zero vectors are identical: count them as cos 1
        cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
        n = torch.tensor(float(a.shape[0]), dtype=torch.float64, device=a.device)
        self._scalars += torch.stack([n, (diff * diff).sum(), cos.sum(), (a * a).sum(), (b * b).sum()]).cpu()
        self._sum_x += a.sum(0).cpu()
        self._sum_xh += b.sum(0).cpu()

    def state(self) -> torch.Tensor:
        return torch.cat([self._scalars, self._sum_x, self._sum_xh])

    @classmethod
    def from_state(cls, state: torch.Tensor, d_model: int) -> "ReconstructionMetrics":
        m = cls(d_model)
        state = state.detach().to("cpu", torch.float64)
        m._scalars = state[:5].clone()
        m._sum_x = state[5 : 5 + d_model].clone()
        m._sum_xh = state[5 + d_model :].clone()
        return m

    @property
    def num_tokens(self) -> int:
        return int(self._scalars[0].item())

    def compute(self) -> dict[str, float]:
        n, sq_err, cos_sum, x_sq, xh_sq = (float(v) for v in self._scalars)
        if n == 0:
            raise TrmError("no real (unmasked) tokens to compute reconstruction metrics on")
        d = self.d_model
        # total variance = sum over features of E[x_j^2] - E[x_j]^2
        var_x = x_sq / n - float((self._sum_x / n).pow(2).sum())
        var_xh = xh_sq / n - float((self._sum_xh / n).pow(2).sum())
        return {
            "mse": sq_err / (n * d),
            "cosine_similarity": cos_sum / n,
            "relative_error": math.sqrt(sq_err) / math.sqrt(x_sq) if x_sq > 0 else (0.0 if sq_err == 0 else math.inf),
            "variance_ratio": var_xh / var_x if var_x > 0 else (1.0 if var_xh <= 0 else math.inf),
            "num_tokens": int(n),
        }


def reconstruction_metrics(x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """The seed-001 metrics of ``x_hat`` against ``x`` ([..., D]) over the tokens where ``mask`` is true."""
    acc = ReconstructionMetrics(x.shape[-1])
    acc.update(x, x_hat, mask)
    return acc.compute()


# ------------------------------------------------------------------------------------------------------- PCA


class CovarianceAccumulator:
    """Streams tokens [..., D] (+ mask) into float64 first and second moments for a PCA fit."""

    def __init__(self, d_model: int):
        self.d_model = int(d_model)
        self.n = 0
        self.sum = None  # float64, on the device of the first batch
        self.outer = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None, max_tokens: int | None = None) -> int:
        """Adds the real tokens (at most ``max_tokens`` in total); returns how many were added."""
        if x.shape[-1] != self.d_model:
            raise TrmError(f"PCA was set up for hidden size {self.d_model}, got {x.shape[-1]}")
        a = _flatten_masked(x, mask).detach().to(torch.float64)
        if max_tokens is not None:
            a = a[: max(0, int(max_tokens) - self.n)]
        if a.shape[0]:
            if self.sum is None:
                self.sum = torch.zeros(self.d_model, dtype=torch.float64, device=a.device)
                self.outer = torch.zeros(self.d_model, self.d_model, dtype=torch.float64, device=a.device)
            a = a.to(self.sum.device)
            self.n += a.shape[0]
            self.sum += a.sum(0)
            self.outer += a.t() @ a
        return a.shape[0]

    def fit(self) -> "PCA":
        if self.n < 2:
            raise TrmError(f"PCA needs at least 2 training tokens, got {self.n}")
        mean = self.sum.cpu() / self.n
        cov = self.outer.cpu() / self.n - torch.outer(mean, mean)
        cov = 0.5 * (cov + cov.t())
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(evals, descending=True)
        return PCA(mean=mean, components=evecs[:, order].t().contiguous(), explained_variance=evals[order].clamp_min(0))


@dataclass
class PCA:
    """Principal axes (rows of ``components``, by decreasing variance) of the training tokens."""

    mean: torch.Tensor  # [D] float64
    components: torch.Tensor  # [D, D] float64, row i = i-th principal axis
    explained_variance: torch.Tensor  # [D] float64

    def reconstruct(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Optimal rank-k affine reconstruction of x [..., D]: mean + P_k (x - mean)."""
        k = max(0, min(int(k), self.components.shape[0]))
        v = self._on(x.device)[0][:k]
        mu = self._on(x.device)[1]
        xc = x.to(torch.float64) - mu
        return ((xc @ v.t()) @ v + mu).to(x.dtype)

    def _on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_device_copies", {})
        key = str(device)
        if key not in cache:
            cache[key] = (self.components.to(device), self.mean.to(device))
        return cache[key]

    def explained_variance_ratio(self, k: int) -> float:
        total = float(self.explained_variance.sum())
        return float(self.explained_variance[: int(k)].sum()) / total if total > 0 else 1.0


def fit_pca(states: torch.Tensor, mask: torch.Tensor | None = None) -> PCA:
    acc = CovarianceAccumulator(states.shape[-1])
    acc.update(states, mask)
    return acc.fit()


def pca_reconstruction(
    train_states: torch.Tensor,
    test_states: torch.Tensor,
    k: int,
    train_mask: torch.Tensor | None = None,
    test_mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """Fits PCA on ``train_states`` ([..., D]) and returns the seed-001 metrics of the rank-``k`` reconstruction of
    the held-out ``test_states``, plus ``params`` (k*D, the size of a tied linear map of that rank) and
    ``explained_variance_ratio`` on the training split."""
    if train_states.shape[-1] != test_states.shape[-1]:
        raise TrmError(f"train hidden size {train_states.shape[-1]} != test hidden size {test_states.shape[-1]}")
    if int(k) <= 0:
        raise TrmError(f"PCA rank must be positive, got {k}")
    pca = fit_pca(train_states, train_mask)
    out = reconstruction_metrics(test_states, pca.reconstruct(test_states, k), test_mask)
    d = train_states.shape[-1]
    out["params"] = min(int(k), d) * d
    out["explained_variance_ratio"] = pca.explained_variance_ratio(k)
    return out


__all__ = [
    "METRIC_NAMES",
    "DimensionCompressor",
    "ReconstructionMetrics",
    "reconstruction_metrics",
    "CovarianceAccumulator",
    "PCA",
    "fit_pca",
    "pca_reconstruction",
]



# ------------------------------------------------------------------------------------------------ checkpoints
# A compressor is saved in the one checkpoint format (train/checkpoint.py): a run's checkpoints/step_N, or a flat
# copy of one (model.safetensors + state.json) such as `trm compress`'s stage1a_final export. Its shape is read
# from the tensors themselves, so any of them loads without the config that trained it.


def compressor_from_weights(weights: dict, where) -> DimensionCompressor:
    """The DimensionCompressor whose state dict ``weights`` is (shape, biases and mean read from the tensors)."""
    w = weights.get("weight")
    if w is None or w.dim() != 2:
        raise TrmError(f"{where}: not a compressor checkpoint (no [D', D] weight)")
    model = DimensionCompressor(w.shape[1], w.shape[0], bias="decoder_bias" in weights, center="mean" in weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise TrmError(f"{where}: weights are not a compressor's ({str(e).splitlines()[0]})") from None
    return model


def load_compressor(path: str | os.PathLike) -> tuple[DimensionCompressor, dict]:
    """(compressor, state.json) from an export, a checkpoint directory or a run directory (its newest checkpoint)."""
    from trmlab.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, with_optimizer=False, with_ema=False)
    return compressor_from_weights(ckpt.model, ckpt.path), ckpt.state


def load_checked(path: str | os.PathLike, d_model: int, d_compressed: int, what: str, source: str,
                 missing: str, hint: str = "") -> tuple[DimensionCompressor, dict]:
    """A saved compressor that must map D=``d_model`` (and D'=``d_compressed``, unless 0), else one line naming
    ``what``; ``missing`` is the error for a path that does not exist (say how to get one)."""
    if not Path(path).expanduser().exists():
        raise TrmError(missing)
    comp, state = load_compressor(Path(path).expanduser())
    if comp.d_model != d_model:
        raise TrmError(f"{what} {path} maps D={comp.d_model}, but {source} has hidden size {d_model}{hint}")
    if d_compressed and comp.d_compressed != d_compressed:
        raise TrmError(f"{what} {path} has D'={comp.d_compressed}, but data.d_compressed is {d_compressed}")
    return comp, state


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, extra: dict) -> Path:
    """Copy checkpoint ``src`` to ``dst`` (weights + state, no optimizer), ``extra`` added to its state.json; written
    under a temporary name and renamed, so ``dst`` is the old export or the new one, never half of either."""
    src, dst = Path(src), Path(dst)
    with atomic_directory(dst) as tmp:
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("optim"):   # Adam's moments: twice the weights, for resuming
                shutil.copy2(f, tmp / f.name)
        state = json.loads((tmp / "state.json").read_text())
        (tmp / "state.json").write_text(json.dumps({**state, **extra}, indent=2, default=str))
    return dst


def save_compressor(path: str | os.PathLike, model: DimensionCompressor, extra: dict | None = None) -> Path:
    """A compressor made outside a run (phase 2's PCA map, tests) as a checkpoint directory at ``path``."""
    from trmlab.train.checkpoint import save_checkpoint

    path = Path(path)
    scratch = path.with_name(f".{path.name}.run{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    state = {"config": {"task": "compressor"}, "compressor": model.config(), **(extra or {})}
    step_dir = save_checkpoint(scratch, 0, model.state_dict(), state, keep=1)
    export_checkpoint(step_dir, path, {})
    shutil.rmtree(scratch, ignore_errors=True)
    return path


__all__ += ["compressor_from_weights", "load_compressor", "load_checked", "export_checkpoint", "save_compressor"]
