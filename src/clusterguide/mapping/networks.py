"""The mapping network T_c (3 bias-free fully connected layers, batch norm between) and
:class:`BatchedMapping`, k of them evaluated and trained as one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clusterguide.errors import UserError
from clusterguide.mapping.recipes import MappingConfig
from clusterguide.moments import MomentMap


def shrink_along(
    x: torch.Tensor, scale: float | torch.Tensor, center: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """``x`` with its coordinates along ``basis`` (orthonormal columns) ``scale`` times as far from
    ``center``'s, the rest unchanged: a shrunk mapping's output, and what
    :func:`training.choose_shrink` tries each factor with."""
    along = (x - center) @ basis
    return x + (scale - 1) * along @ basis.T


def reflect(x: torch.Tensor, normals: torch.Tensor, offsets: torch.Tensor, sweeps: int = 2) -> torch.Tensor:
    """``x`` with every row on the outer side of a face (x . n_j < b_j) reflected across it, face
    after face, ``sweeps`` times over: a reflected row can cross another face, and two passes put
    back all but a few (a fold's output; see mapping/fold.py)."""
    for _ in range(sweeps):
        for n, b in zip(normals, offsets):
            depth = x @ n - b
            x = x - 2 * depth.clamp(max=0)[:, None] * n
    return x


class MappingNetwork(nn.Module):
    """T_c: Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear, no biases (optionally + e).

    A ``fast`` mapping found short of its fidelity target on fresh samples may also carry a shrink
    (:meth:`shrink_toward`, chosen after training by :func:`training.choose_shrink`): its output's
    coordinates along a few orthonormal directions scaled by a factor below 1 about a centre. It
    may also carry a fold (:meth:`fold_with`, chosen after training by :func:`fold.fit_fold`): its
    output moved to the cluster's own moments and reflected back across the cluster's faces."""

    shrink_scale: torch.Tensor | None
    shrink_center: torch.Tensor | None
    shrink_basis: torch.Tensor | None
    fold_source: torch.Tensor | None
    fold_target: torch.Tensor | None
    fold_matrix: torch.Tensor | None
    fold_normals: torch.Tensor | None
    fold_offsets: torch.Tensor | None

    def __init__(self, aux_dim: int, width: int, latent_dim: int, residual: bool = False) -> None:
        super().__init__()
        if residual and aux_dim != latent_dim:
            raise UserError("a residual mapping needs aux_dim == latent_dim")
        self.residual = residual
        self.fc1 = nn.Linear(aux_dim, width, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.fc3 = nn.Linear(width, latent_dim, bias=False)
        if residual:
            nn.init.zeros_(self.fc3.weight)
        # None (not in the state dict) unless a shrink is set: run folders without one load as before
        for name in self.SHRINK + self.FOLD:
            self.register_buffer(name, None)

    SHRINK = ("shrink_scale", "shrink_center", "shrink_basis")
    FOLD = ("fold_source", "fold_target", "fold_matrix", "fold_normals", "fold_offsets")

    def fold_with(self, moment_map: MomentMap, normals: torch.Tensor, offsets: torch.Tensor) -> None:
        """From now on the output is moved by ``moment_map`` and then reflected back across the
        faces (``normals`` (f, latent_dim), unit, pointing inward; ``offsets`` (f,)); see
        mapping/fold.py."""
        contiguous = torch.contiguous_format  # as a saved run loads them (see shrink_toward)
        self.fold_source = moment_map.source_mean.detach().float().clone(memory_format=contiguous)
        self.fold_target = moment_map.target_mean.detach().float().clone(memory_format=contiguous)
        self.fold_matrix = moment_map.matrix.detach().float().clone(memory_format=contiguous)
        self.fold_normals = (
            normals.detach().float().reshape(-1, self.fc3.out_features).clone(memory_format=contiguous)
        )
        self.fold_offsets = offsets.detach().float().reshape(-1).clone(memory_format=contiguous)

    def shrink_toward(self, scale: float | torch.Tensor, center: torch.Tensor, basis: torch.Tensor) -> None:
        """From now on the output's coordinates along ``basis`` ((latent_dim, d), orthonormal
        columns) are ``scale`` times as far from ``center``'s; the rest of the output is unchanged."""
        self.shrink_scale = torch.as_tensor(scale, dtype=torch.float32).reshape(()).clone()
        # contiguous, as a saved run loads them: a matmul's rounding can depend on its operands'
        # memory layout (a QR factor is column-major), and a run must sample the same to the
        # last bit before and after it is saved
        self.shrink_center = center.detach().float().reshape(-1).clone(memory_format=torch.contiguous_format)
        self.shrink_basis = basis.detach().float().clone(memory_format=torch.contiguous_format)

    @property
    def aux_dim(self) -> int:
        return self.fc1.in_features

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.fc1(e)))
        h = F.relu(self.bn2(self.fc2(h)))
        out = self.fc3(h)
        out = out + e if self.residual else out
        if self.shrink_basis is not None:
            assert self.shrink_scale is not None and self.shrink_center is not None
            out = shrink_along(out, self.shrink_scale, self.shrink_center, self.shrink_basis)
        if self.fold_matrix is not None:
            assert self.fold_source is not None and self.fold_target is not None
            assert self.fold_normals is not None and self.fold_offsets is not None
            out = self.fold_target + (out - self.fold_source) @ self.fold_matrix.T
            out = reflect(out, self.fold_normals, self.fold_offsets)
        return out


class BatchedMapping(nn.Module):
    """K mapping networks evaluated as one: inputs (K, B, aux_dim) -> (K, B, latent_dim).

    With a ``basis`` (K, latent_dim, d) the last layer writes d coordinates that the basis places in
    latent space (T_c(e) = e + U_c g_c(e)); :meth:`export` folds U_c into the plain last layer."""

    basis: torch.Tensor | None  # (k, latent_dim, d) buffer, or None for full-space mappings

    def __init__(
        self,
        k: int,
        aux_dim: int,
        width: int,
        latent_dim: int,
        residual: bool,
        generator: torch.Generator,
        basis: torch.Tensor | None = None,
        drawn: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.residual = residual
        if basis is not None and (basis.shape[0] != k or basis.shape[1] != latent_dim or not residual):
            raise ValueError(f"basis must be (k={k}, latent_dim={latent_dim}, d) and the mapping residual")

        def linear(n_in: int, n_out: int, zero: bool = False) -> nn.Parameter:
            bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default init
            w = (
                torch.zeros(k, n_in, n_out)
                if zero
                else (torch.rand(k, n_in, n_out, generator=generator) * 2 - 1) * bound
            )
            return nn.Parameter(w)

        self.w1 = linear(aux_dim, width)
        self.w2 = linear(width, width)
        self.w3 = linear(width, latent_dim if basis is None else basis.shape[2], zero=residual)
        self.register_buffer("basis", basis)
        # how many of each cluster's leading basis columns IMLE draws in (the rest it only writes to)
        self.drawn = list(drawn) if drawn is not None else None
        for i in (1, 2):
            self.register_parameter(f"g{i}", nn.Parameter(torch.ones(k, 1, width)))
            self.register_parameter(f"b{i}", nn.Parameter(torch.zeros(k, 1, width)))
            self.register_buffer(f"mean{i}", torch.zeros(k, 1, width))
            self.register_buffer(f"var{i}", torch.ones(k, 1, width))
        self.momentum = 0.1
        self.eps = 1e-5
        self.steps = 0

    # the parameters and buffers that hold one slice per cluster (the basis is fixed)
    PER_CLUSTER = ("w1", "w2", "w3", "g1", "b1", "g2", "b2", "mean1", "var1", "mean2", "var2")

    def cluster_state(self, c: int) -> dict[str, torch.Tensor]:
        """A copy of cluster c's weights and batch-norm statistics (see :meth:`load_cluster_state`)."""
        return {name: getattr(self, name)[c].detach().clone() for name in self.PER_CLUSTER}

    @torch.no_grad()
    def load_cluster_state(self, c: int, state: dict[str, torch.Tensor]) -> None:
        """Cluster c back to a state :meth:`cluster_state` took; the other clusters are untouched."""
        for name, value in state.items():
            getattr(self, name)[c].copy_(value)

    def _bn(self, h: torch.Tensor, i: int, c: int | None = None) -> torch.Tensor:
        """Batch norm i of every cluster, or of cluster ``c`` alone (eval statistics; without
        autograd in place on ``h``, which is then a layer's fresh output)."""
        mean_buf, var_buf = getattr(self, f"mean{i}"), getattr(self, f"var{i}")
        if c is not None:
            scale = getattr(self, f"g{i}")[c] / torch.sqrt(var_buf[c] + self.eps)
            if not torch.is_grad_enabled():
                return h.sub_(mean_buf[c]).mul_(scale).add_(getattr(self, f"b{i}")[c])
            return (h - mean_buf[c]) * scale + getattr(self, f"b{i}")[c]
        if self.training:
            mean = h.mean(1, keepdim=True)
            var = h.var(1, keepdim=True, unbiased=False)
            with torch.no_grad():
                n = h.shape[1]
                mean_buf.lerp_(mean, self.momentum)
                var_buf.lerp_(var * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = mean_buf, var_buf
        return (h - mean) / torch.sqrt(var + self.eps) * getattr(self, f"g{i}") + getattr(self, f"b{i}")

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = F.relu(self._bn(torch.bmm(e, self.w1), 1))
        h = F.relu(self._bn(torch.bmm(h, self.w2), 2))
        out = torch.bmm(h, self.w3)
        if self.basis is not None:
            out = torch.bmm(out, self.basis.transpose(1, 2))
        return out + e if self.residual else out

    def last_layer_output(self, e: torch.Tensor, c: int) -> torch.Tensor:
        """Cluster c alone, eval mode: (N, aux_dim) -> what its last layer writes (N, d or latent_dim).

        Without autograd (conditional matching: hundreds of thousands of candidate rows) batch norm
        and ReLU run in place on the layer's output: the same arithmetic, so the same result, at
        half the time of the three temporaries the out-of-place form allocates per layer."""
        inplace = not torch.is_grad_enabled()
        h = F.relu(self._bn(e @ self.w1[c], 1, c), inplace=inplace)
        h = F.relu(self._bn(h @ self.w2[c], 2, c), inplace=inplace)
        return h @ self.w3[c]

    @torch.no_grad()
    def start_from(self, net: MappingNetwork) -> None:
        """Every one of the k mappings becomes a copy of ``net`` (same shape): its weights, not a
        shrink or fold it carries (a child's own, if any, are chosen after the child trains)."""
        for i in range(self.w1.shape[0]):
            self.w1[i].copy_(net.fc1.weight.T)
            self.w2[i].copy_(net.fc2.weight.T)
            # with a basis, the parent's last layer in its coordinates (exact when the parent writes
            # only inside the basis, as a refined cluster's parent does)
            w3 = net.fc3.weight.T if self.basis is None else net.fc3.weight.T @ self.basis[i]
            self.w3[i].copy_(w3)
            for j, bn in ((1, net.bn1), (2, net.bn2)):
                getattr(self, f"g{j}")[i, 0].copy_(bn.weight)
                getattr(self, f"b{j}")[i, 0].copy_(bn.bias)
                getattr(self, f"mean{j}")[i, 0].copy_(bn.running_mean)
                getattr(self, f"var{j}")[i, 0].copy_(bn.running_var)

    def export(self, index: int) -> MappingNetwork:
        aux_dim, width = int(self.w1.shape[1]), int(self.w1.shape[2])
        latent_dim = int(self.w3.shape[2] if self.basis is None else self.basis.shape[1])
        net = MappingNetwork(aux_dim, width, latent_dim, self.residual)
        with torch.no_grad():
            net.fc1.weight.copy_(self.w1[index].T)
            net.fc2.weight.copy_(self.w2[index].T)
            w3 = self.w3[index] if self.basis is None else self.w3[index] @ self.basis[index].T
            net.fc3.weight.copy_(w3.T)
            for i, bn in ((1, net.bn1), (2, net.bn2)):
                assert bn.running_mean is not None and bn.running_var is not None
                assert bn.num_batches_tracked is not None
                bn.weight.copy_(getattr(self, f"g{i}")[index, 0])
                bn.bias.copy_(getattr(self, f"b{i}")[index, 0])
                bn.running_mean.copy_(getattr(self, f"mean{i}")[index, 0])
                bn.running_var.copy_(getattr(self, f"var{i}")[index, 0])
                bn.num_batches_tracked.fill_(self.steps)
        return net.eval()


def make_network(config: MappingConfig, latent_dim: int) -> MappingNetwork:
    return MappingNetwork(latent_dim, config.width, latent_dim, config.residual)
