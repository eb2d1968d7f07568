"""FactoredMatrix against the dense products it stands for (float64, fixed seed)."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import InputError
from workbench.factored import FactoredMatrix

TOL = {"atol": 1e-10, "rtol": 1e-10}


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _fm(batch: tuple[int, ...] = (), ldim: int = 7, mdim: int = 3, rdim: int = 5) -> FactoredMatrix:
    return FactoredMatrix(_rand(*batch, ldim, mdim, seed=1), _rand(*batch, mdim, rdim, seed=2))


def test_shapes_and_dense_products() -> None:
    fm = _fm((3, 4))
    assert fm.shape == (3, 4, 7, 5) and fm.ndim == 4 and len(fm) == 3
    assert (fm.ldim, fm.mdim, fm.rdim) == (7, 3, 5)
    assert fm.dtype == torch.float64 and fm.device == torch.device("cpu")
    torch.testing.assert_close(fm.AB, fm.A @ fm.B, **TOL)
    assert "(3, 4, 7, 5)" in repr(fm) and "mdim=3" in repr(fm)
    sq = _fm((2,), ldim=6, mdim=3, rdim=6)
    torch.testing.assert_close(sq.BA, sq.B @ sq.A, **TOL)
    assert sq.BA.shape == (2, 3, 3)


def test_not_a_tensor() -> None:
    fm = _fm()
    assert not isinstance(fm, torch.Tensor)
    assert not hasattr(FactoredMatrix, "__torch_function__")


def test_broadcast_batch_dims() -> None:
    A, B = _rand(3, 1, 6, 2, seed=3), _rand(1, 4, 2, 5, seed=4)
    fm = FactoredMatrix(A, B)
    assert fm.shape == (3, 4, 6, 5) and fm.A.shape == (3, 4, 6, 2) and fm.B.shape == (3, 4, 2, 5)
    torch.testing.assert_close(fm.AB, A @ B, **TOL)
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(A @ B), **TOL)
    torch.testing.assert_close(fm.S, torch.linalg.svdvals(A @ B)[..., :2], **TOL)
    unbatched_b = FactoredMatrix(_rand(3, 4, 6, 2), _rand(2, 5))
    assert unbatched_b.shape == (3, 4, 6, 5)


@pytest.mark.parametrize("batch", [(), (3, 4)])
def test_svd_matches_dense(batch: tuple[int, ...]) -> None:
    fm = _fm(batch, ldim=8, mdim=3, rdim=6)
    U, S, V = fm.svd()
    assert U.shape == (*batch, 8, 3) and S.shape == (*batch, 3) and V.shape == (*batch, 6, 3)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ V.mT, fm.AB, **TOL)
    torch.testing.assert_close(S, torch.linalg.svdvals(fm.AB)[..., :3], **TOL)
    assert bool((S[..., :-1] >= S[..., 1:]).all())
    eye = torch.eye(3, dtype=torch.float64).expand(*batch, 3, 3)
    torch.testing.assert_close(U.mT @ U, eye, **TOL)
    torch.testing.assert_close(V.mT @ V, eye, **TOL)
    assert fm.svd() is fm.svd()  # cached
    assert fm.U is U and fm.S is S and fm.V is V


def test_svd_when_mdim_exceeds_ldim() -> None:
    fm = _fm(ldim=3, mdim=5, rdim=4)  # rank <= 3
    U, S, V = fm.svd()
    assert U.shape == (3, 3) and S.shape == (3,) and V.shape == (4, 3)
    torch.testing.assert_close(U @ torch.diag(S) @ V.mT, fm.AB, **TOL)
    torch.testing.assert_close(S, torch.linalg.svdvals(fm.AB), **TOL)


def test_norm_is_frobenius() -> None:
    fm = _fm((3, 4))
    assert fm.norm().shape == (3, 4)
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(fm.AB), **TOL)


def test_eigenvalues_are_nonzero_eigenvalues_of_ab() -> None:
    fm = _fm((2,), ldim=6, mdim=3, rdim=6)
    eig = fm.eigenvalues
    assert eig.shape == (2, 3) and eig.is_complex()
    dense = torch.linalg.eigvals(fm.AB)  # [2, 6]; three of them are (numerically) zero
    for got, want in zip(eig, dense, strict=True):
        want_top = want[want.abs().argsort(descending=True)][:3]
        got_sorted = got[got.abs().argsort(descending=True)]
        torch.testing.assert_close(got_sorted, want_top, atol=1e-8, rtol=1e-8)


def test_transpose() -> None:
    fm = _fm((3,))
    assert fm.T.shape == (3, 5, 7)
    torch.testing.assert_close(fm.T.AB, fm.AB.mT, **TOL)


def test_matmul_with_tensors_and_vectors() -> None:
    fm = _fm((3,))  # [3, 7, 5], mdim 3
    right, left = _rand(5, 4, seed=5), _rand(2, 7, seed=6)
    out = fm @ right
    assert isinstance(out, FactoredMatrix) and out.shape == (3, 7, 4) and out.mdim == 3
    torch.testing.assert_close(out.AB, fm.AB @ right, **TOL)
    out = left @ fm
    assert isinstance(out, FactoredMatrix) and out.shape == (3, 2, 5)
    torch.testing.assert_close(out.AB, left @ fm.AB, **TOL)
    v_r, v_l = _rand(5, seed=7), _rand(7, seed=8)
    out = fm @ v_r
    assert isinstance(out, torch.Tensor) and out.shape == (3, 7)
    torch.testing.assert_close(out, fm.AB @ v_r, **TOL)
    out = v_l @ fm
    assert isinstance(out, torch.Tensor) and out.shape == (3, 5)
    torch.testing.assert_close(out, v_l @ fm.AB, **TOL)
    flat = _fm()
    torch.testing.assert_close(flat @ v_r, flat.AB @ v_r, **TOL)
    torch.testing.assert_close(v_l @ flat, v_l @ flat.AB, **TOL)
    batched = _rand(3, 5, 2, seed=9)
    torch.testing.assert_close((fm @ batched).AB, fm.AB @ batched, **TOL)


@pytest.mark.parametrize(("m1", "m2"), [(2, 4), (4, 2)])
def test_matmul_factored_keeps_smaller_inner_dim(m1: int, m2: int) -> None:
    f1 = FactoredMatrix(_rand(3, 6, m1, seed=10), _rand(3, m1, 5, seed=11))
    f2 = FactoredMatrix(_rand(3, 5, m2, seed=12), _rand(3, m2, 4, seed=13))
    out = f1 @ f2
    assert isinstance(out, FactoredMatrix) and out.shape == (3, 6, 4) and out.mdim == min(m1, m2)
    torch.testing.assert_close(out.AB, f1.AB @ f2.AB, **TOL)


def test_indexing_batch_dims() -> None:
    fm = _fm((3, 4))
    for key in (1, (1, 2), (slice(None), 2)):
        sub = fm[key]
        assert isinstance(sub, FactoredMatrix)
        torch.testing.assert_close(sub.AB, fm.AB[key], **TOL)
    assert fm[1].shape == (4, 7, 5) and fm[1, 2].shape == (7, 5) and fm[:, 2].shape == (3, 7, 5)


def test_scalar_multiply() -> None:
    fm = _fm((2,))
    for out in (fm * 2.5, 2.5 * fm, fm * torch.tensor(2.5, dtype=torch.float64),
                torch.tensor(2.5, dtype=torch.float64) * fm):
        assert isinstance(out, FactoredMatrix)
        torch.testing.assert_close(out.AB, 2.5 * fm.AB, **TOL)


def test_to_dtype() -> None:
    fm = _fm().to(torch.float32)
    assert fm.dtype == torch.float32 and fm.A.dtype == fm.B.dtype == torch.float32


def test_error_inner_dim_mismatch() -> None:
    with pytest.raises(InputError, match=r"expected A\.shape\[-1\] == B\.shape\[-2\].*\(7, 3\).*\(4, 5\)"):
        FactoredMatrix(_rand(7, 3), _rand(4, 5))
    with pytest.raises(InputError, match="must be a tensor of shape"):
        FactoredMatrix(_rand(3), _rand(3, 5))


def test_error_square_only() -> None:
    fm = _fm(ldim=7, rdim=5)
    with pytest.raises(InputError, match=r"BA needs a square matrix.*\(7, 5\)"):
        _ = fm.BA
    with pytest.raises(InputError, match=r"eigenvalues needs a square matrix.*\(7, 5\)"):
        _ = fm.eigenvalues


def test_error_indexing_into_matrix_dims() -> None:
    fm = _fm((3,))
    with pytest.raises(InputError, match=r"1 batch dim.*index \.AB\[\.\.\.\]"):
        fm[0, 1]
    with pytest.raises(InputError, match=r"0 batch dim"):
        _fm()[0]
    with pytest.raises(InputError, match="index .AB"):
        fm[..., 0]


def test_error_matmul_shape_mismatch() -> None:
    fm = _fm()  # [7, 5]
    with pytest.raises(InputError, match=r"\(7, 5\) @ \(4, 2\).*rdim=5, got 4"):
        fm @ _rand(4, 2)
    with pytest.raises(InputError, match=r"\(7, 5\) @ \(4,\).*rdim=5, got 4"):
        fm @ _rand(4)
    with pytest.raises(InputError, match=r"\(7, 5\) @ \(4, 2\)"):
        fm @ _fm(ldim=4, rdim=2)
    with pytest.raises(InputError, match=r"tensor \(2, 4\) @ FactoredMatrix \(7, 5\).*ldim=7, got 4"):
        _rand(2, 4) @ fm
    with pytest.raises(InputError, match="0-d tensor"):
        fm * _rand(3)
