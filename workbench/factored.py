"""A low-rank matrix kept as its two factors: ``M = A @ B`` without ever building ``M``.

Circuit matrices such as a head's OV (``W_V @ W_O``, ``[d_model, d_model]`` of rank ``d_head``) or
QK (``W_Q @ W_K^T``) are products of thin factors. :class:`FactoredMatrix` stores ``A``
(``[..., ldim, mdim]``) and ``B`` (``[..., mdim, rdim]``) and computes what interpretability needs
(singular values, Frobenius norm, eigenvalues, products with other matrices) from the factors, at
a cost that grows with ``mdim`` rather than with ``ldim * rdim``. Leading batch dims (for example
``[n_layers, n_heads]``) broadcast between ``A`` and ``B``.

It is a plain object, not a tensor: call ``.AB`` when the dense ``[..., ldim, rdim]`` matrix is
really wanted. The SVD is computed once and cached; do not modify ``A`` or ``B`` in place.
"""

from __future__ import annotations

import torch

from .errors import InputError

Scalar = int | float | complex | torch.Tensor


def _check_matrix(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim < 2:
        got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"FactoredMatrix: {name} must be a tensor of shape [..., rows, cols], got {got}; "
                         "pass a 2-D (or batched) torch.Tensor.")
    return t


class FactoredMatrix:
    """The product ``A @ B`` (shape ``[..., ldim, rdim]``) kept as ``A`` ``[..., ldim, mdim]`` and
    ``B`` ``[..., mdim, rdim]``; leading dims of ``A`` and ``B`` broadcast."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        A, B = _check_matrix("A", A), _check_matrix("B", B)
        if A.shape[-1] != B.shape[-2]:
            raise InputError(f"FactoredMatrix: expected A.shape[-1] == B.shape[-2], got A {tuple(A.shape)} "
                             f"and B {tuple(B.shape)}; A must be [..., ldim, mdim] and B [..., mdim, rdim].")
        try:
            batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as e:
            raise InputError(f"FactoredMatrix: batch dims of A {tuple(A.shape)} and B {tuple(B.shape)} do "
                             "not broadcast; give them equal leading dims or size-1 dims.") from e
        self._A = A.expand(*batch, *A.shape[-2:])
        self._B = B.expand(*batch, *B.shape[-2:])
        self._svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ---- shape and storage ------------------------------------------------------------------
    @property
    def A(self) -> torch.Tensor:
        """Left factor, ``[..., ldim, mdim]`` (a broadcast view)."""
        return self._A

    @property
    def B(self) -> torch.Tensor:
        """Right factor, ``[..., mdim, rdim]`` (a broadcast view)."""
        return self._B

    @property
    def shape(self) -> torch.Size:
        """``(*batch, ldim, rdim)``, the shape of ``AB``."""
        return torch.Size((*self._A.shape[:-1], self._B.shape[-1]))

    @property
    def ldim(self) -> int:
        return self._A.shape[-2]

    @property
    def mdim(self) -> int:
        return self._A.shape[-1]

    @property
    def rdim(self) -> int:
        return self._B.shape[-1]

    @property
    def ndim(self) -> int:
        return self._A.ndim

    @property
    def device(self) -> torch.device:
        return self._A.device

    @property
    def dtype(self) -> torch.dtype:
        return self._A.dtype

    def to(self, device_or_dtype: torch.device | str | torch.dtype) -> FactoredMatrix:
        """Both factors moved to a device or cast to a dtype."""
        return FactoredMatrix(self._A.to(device_or_dtype), self._B.to(device_or_dtype))

    def __len__(self) -> int:
        if self.ndim == 2:
            raise InputError("len() of an unbatched FactoredMatrix; it has no batch dims. Use .shape.")
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim}, dtype={self.dtype}, "
                f"device={self.device})")

    # ---- dense views ------------------------------------------------------------------------
    @property
    def AB(self) -> torch.Tensor:
        """The materialised product, ``[..., ldim, rdim]``."""
        return self._A @ self._B

    @property
    def BA(self) -> torch.Tensor:
        """``B @ A``, ``[..., mdim, mdim]``; only defined when ``AB`` is square (ldim == rdim)."""
        self._require_square("BA")
        return self._B @ self._A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose, ``[..., rdim, ldim]``: ``FactoredMatrix(B^T, A^T)``."""
        return FactoredMatrix(self._B.mT, self._A.mT)

    def _require_square(self, what: str) -> None:
        if self.ldim != self.rdim:
            raise InputError(f"FactoredMatrix.{what} needs a square matrix (ldim == rdim), got shape "
                             f"{tuple(self.shape)}; use .svd() or .S for a rectangular one.")

    # ---- spectra ----------------------------------------------------------------------------
    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, S, V)`` with ``AB == U @ diag(S) @ V.mT``, without building ``AB``.

        With ``k = min(ldim, mdim, rdim)`` (``mdim`` for a low-rank product): ``U`` is
        ``[..., ldim, k]`` and ``V`` is ``[..., rdim, k]`` with orthonormal columns, ``S`` is
        ``[..., k]`` in descending order. Note ``V``, not ``Vh``. Computed from the reduced QR of
        ``A`` and ``B^T`` and the SVD of the small ``R_A @ R_B^T`` core; cached.
        """
        if self._svd is None:
            qa, ra = torch.linalg.qr(self._A)  # [..., ldim, ka], [..., ka, mdim]
            qb, rb = torch.linalg.qr(self._B.mT)  # [..., rdim, kb], [..., kb, mdim]
            uc, s, vch = torch.linalg.svd(ra @ rb.mT, full_matrices=False)
            self._svd = (qa @ uc, s, qb @ vch.mT)
        return self._svd

    @property
    def U(self) -> torch.Tensor:
        """Left singular vectors, ``[..., ldim, k]`` (see :meth:`svd`)."""
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        """Singular values, ``[..., k]``, descending (see :meth:`svd`)."""
        return self.svd()[1]

    @property
    def V(self) -> torch.Tensor:
        """Right singular vectors as columns, ``[..., rdim, k]`` (see :meth:`svd`)."""
        return self.svd()[2]

    def norm(self) -> torch.Tensor:
        """Frobenius norm of ``AB``, ``[...]``, from the singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of ``BA``, ``[..., mdim]``, complex; square ``AB`` only.

        ``AB`` and ``BA`` share their nonzero eigenvalues, so for mdim < ldim these are ``AB``'s
        eigenvalues minus ``ldim - mdim`` zeros, at ``mdim x mdim`` cost.
        """
        self._require_square("eigenvalues")
        return torch.linalg.eigvals(self._B @ self._A)

    # ---- algebra ----------------------------------------------------------------------------
    def __matmul__(self, other: torch.Tensor | FactoredMatrix) -> torch.Tensor | FactoredMatrix:
        """``self @ other``: a FactoredMatrix for a matrix or FactoredMatrix ``[..., rdim, n]``;
        a tensor ``[..., ldim]`` for a vector ``[rdim]``."""
        if isinstance(other, FactoredMatrix):
            self._check_inner(self.shape, other.shape, other.shape[-2])
            if self.mdim <= other.mdim:
                return FactoredMatrix(self._A, (self._B @ other.A) @ other.B)
            return FactoredMatrix(self._A @ (self._B @ other.A), other.B)
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        if other.ndim == 1:
            self._check_inner(self.shape, other.shape, other.shape[0])
            return (self._A @ (self._B @ other[:, None]))[..., 0]
        self._check_inner(self.shape, other.shape, other.shape[-2])
        return FactoredMatrix(self._A, self._B @ other)

    def __rmatmul__(self, other: torch.Tensor) -> torch.Tensor | FactoredMatrix:
        """``other @ self``: a FactoredMatrix for a matrix ``[..., n, ldim]``; a tensor ``[..., rdim]``
        for a vector ``[ldim]``."""
        if not isinstance(other, torch.Tensor):
            return NotImplemented
        if other.shape[-1] != self.ldim:
            raise InputError(f"Cannot multiply tensor {tuple(other.shape)} @ FactoredMatrix "
                             f"{tuple(self.shape)}: expected the tensor's last dim to be ldim={self.ldim}, "
                             f"got {other.shape[-1]}; transpose or reshape the tensor.")
        if other.ndim == 1:
            return ((other[None, :] @ self._A) @ self._B)[..., 0, :]
        return FactoredMatrix(other @ self._A, self._B)

    @staticmethod
    def _check_inner(left: torch.Size, right: torch.Size, inner: int) -> None:
        if left[-1] != inner:
            raise InputError(f"Cannot multiply FactoredMatrix {tuple(left)} @ {tuple(right)}: expected the "
                             f"right operand's row dim to be rdim={left[-1]}, got {inner}; transpose or "
                             "reshape it.")

    def __mul__(self, scalar: Scalar) -> FactoredMatrix:
        """``AB`` times a python number or 0-d tensor (scales ``A``)."""
        if isinstance(scalar, torch.Tensor) and scalar.ndim != 0:
            raise InputError(f"FactoredMatrix * tensor needs a 0-d tensor, got shape {tuple(scalar.shape)}; "
                             "use a python number or scalar tensor, or multiply .AB for elementwise work.")
        if not isinstance(scalar, int | float | complex | torch.Tensor):
            return NotImplemented
        return FactoredMatrix(self._A * scalar, self._B)

    __rmul__ = __mul__

    def __getitem__(self, key: object) -> FactoredMatrix:
        """Index the batch dims only, e.g. ``fm[2]``, ``fm[2, 3]``, ``fm[:, 1]``; returns a
        FactoredMatrix ``[*indexed_batch, ldim, rdim]``."""
        keys = key if isinstance(key, tuple) else (key,)
        used = 0
        for k in keys:
            if k is None or k is Ellipsis:
                raise InputError(f"FactoredMatrix indexing takes ints, slices or index tensors for the batch "
                                 f"dims, got {k!r}; index .AB[...] for anything else.")
            is_mask = isinstance(k, torch.Tensor) and k.dtype == torch.bool
            used += k.ndim if is_mask else 1
        n_batch = self.ndim - 2
        if used > n_batch:
            raise InputError(f"FactoredMatrix {tuple(self.shape)} has {n_batch} batch dim(s), but the index "
                             f"{key!r} reaches {used} dims, into the matrix dims; index .AB[...] to pick "
                             "rows or columns.")
        return FactoredMatrix(self._A[keys], self._B[keys])
