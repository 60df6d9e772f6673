"""k-nearest-neighbour search over a feature bank: torch or faiss, bounded memory, same results.

Search runs in two stages:

1. **Candidates.** A fast float32 search returns the ``k + 16`` best bank rows per query, either
   with torch (matmul + topk over (query chunk x bank chunk) blocks) or with faiss (``IndexFlatIP``,
   or ``IndexIVFFlat`` for approximate search of very large banks).
2. **Exact re-ranking.** Every candidate is re-scored with :func:`canonical_dot` (the exact inner
   product, correctly rounded to float32) and ranked by (-similarity, bank index). For exact
   (flat) search a per-query certificate proves no row outside the candidates can enter the
   top-k: the float32 search error is at most ``eps = 1.05 * D * u * |q| * max|b|`` (any summation
   order), so it suffices that the k-th canonical similarity exceeds the last candidate's float32
   score by ``eps`` plus two float32 ulps. Queries without the certificate (heavy ties, duplicate
   rows) are answered by an exact float64 scan.

So the torch and faiss backends, and every chunking, return bit-identical similarities and
indices (``tests/eval/test_knn.py``).

Memory bound (torch backend): at most ``max_memory_mb`` MiB of similarities exist at once (one
float32 query-chunk x bank-chunk block; float64 blocks of the same byte size in the exact
fallback), plus O(query_chunk x k) candidate buffers and an ~8 MiB re-scoring buffer. With the
defaults (256 MiB) a 1M x 768 bank is scanned in 256-query x 262144-row blocks. The faiss backend
bounds its own blocks (4096 x 1024 floats = 16 MiB) and, unless ``chunk_size`` is set, is called
with up to 16384 queries at a time.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssl_diffusion.errors import UserError, did_you_mean, require
from ssl_diffusion.eval.exact_dot import canonical_dot, row_norms

MARGIN = 16  # extra candidates beyond k, so the certificate rarely fails (random data: never seen)
BACKENDS = ("auto", "faiss", "torch")
INDEX_KINDS = ("flat", "ivf")
_RESCORE_BYTES = 8 * 2**20  # float32 gather buffer of the re-ranking step (cache-sized)
_FAISS_QUERY_CHUNK = 16384  # queries per faiss search call when chunk_size is not set
_MATMUL_ROUNDOFF = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}  # fp32 / tf32 / bf16


@dataclass
class NeighborResult:
    """The k nearest bank rows of each query, best first."""

    similarities: Tensor  # (Q, k) float32 exact inner products, correctly rounded; descending
    indices: Tensor  # (Q, k) int64 bank rows; equal similarities ordered by lower index
    num_exact_fallback: int = 0  # queries answered by the exact float64 scan (certificate failed)


@dataclass
class ChunkPlan:
    """Block sizes of the similarity computation."""

    query_chunk: int  # queries per block
    bank_chunk: int  # bank rows per block; query_chunk * bank_chunk * 4 bytes <= max_memory_mb


def plan_chunks(
    num_queries: int, bank_size: int, max_memory_mb: float, chunk_size: int | None = None
) -> ChunkPlan:
    """Block sizes so one float32 similarity block stays within ``max_memory_mb`` MiB."""
    if not max_memory_mb > 0:
        raise UserError(f"max_memory_mb={max_memory_mb} must be > 0; e.g. knn.max_memory_mb=256")
    if chunk_size is not None and chunk_size < 1:
        raise UserError(f"chunk_size={chunk_size} must be >= 1 or null (derived from memory)")
    budget = max(1, int(max_memory_mb * 2**20) // 4)  # float32 entries
    if chunk_size is None:
        # Whole bank per block when it fits; >= 256 queries keeps the matmul efficient.
        chunk_size = max(256, min(1024, budget // max(bank_size, 1)))
    query_chunk = max(1, min(chunk_size, num_queries, budget))
    return ChunkPlan(query_chunk, max(1, min(bank_size, budget // query_chunk)))


def as_features(x: Tensor | np.ndarray, name: str) -> Tensor:
    """A (N, D) float32 tensor of finite features, or a UserError naming ``name``."""
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise UserError(
            f"{name} must be a non-empty (N, D) feature matrix, got shape {tuple(t.shape)}"
        )
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise UserError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.float().contiguous()
    lo, hi = torch.aminmax(t)  # NaN propagates; one pass, ~10x faster than isfinite().all()
    if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
        raise UserError(
            f"{name} contains NaN or inf; check the feature extractor (e.g. fp16 overflow)"
        )
    return t


def _check_queries(bank_shape: tuple[int, int], queries: Tensor, k: int) -> None:
    if queries.shape[1] != bank_shape[1]:
        raise UserError(
            f"query features have dimension {queries.shape[1]} but the bank has {bank_shape[1]}; "
            "extract both with the same model and layer"
        )
    if not 1 <= k <= bank_shape[0]:
        raise UserError(
            f"k={k} is outside [1, bank size {bank_shape[0]}]; lower k or use a larger bank"
        )


def _normalized(x: Tensor, normalize: bool) -> Tensor:
    return torch.nn.functional.normalize(x, dim=1) if normalize else x


def _check_choice(value: str, choices: tuple[str, ...], field: str) -> str:
    if value not in choices:
        raise UserError(
            f"unknown {field} `{value}`; choose one of {', '.join(choices)}"
            f"{did_you_mean(value, choices)}"
        )
    return value


def resolve_backend(backend: str, index: str) -> str:
    """``auto`` -> torch for flat search (2.3-8x faster than faiss-cpu flat on the dev CPU,
    benchmarks/README.md), faiss for IVF (torch has no IVF)."""
    _check_choice(backend, BACKENDS, "knn backend")
    _check_choice(index, INDEX_KINDS, "knn index")
    if backend == "auto":
        return "faiss" if index == "ivf" else "torch"
    if backend == "torch" and index == "ivf":
        raise UserError("index `ivf` needs the faiss backend; set knn.backend=faiss (or auto)")
    return backend


def _import_faiss():
    # faiss is optional: knn.backend=torch (the default for flat search) needs only torch
    return require("faiss", "knn.backend=faiss (or knn.index=ivf; knn.backend=torch needs only "
                            "torch)", "faiss-cpu")


def _torch_candidates(
    bank: Tensor, plan: ChunkPlan
) -> Callable[[Tensor, int], tuple[Tensor, Tensor]]:
    """Float32 top-``kc`` by matmul + topk, scanning the bank in ``plan.bank_chunk`` blocks."""

    def search(queries: Tensor, kc: int) -> tuple[Tensor, Tensor]:
        best_v = best_i = None
        for b0 in range(0, bank.shape[0], plan.bank_chunk):
            sims = queries @ bank[b0 : b0 + plan.bank_chunk].T  # (q, bc) the bounded block
            v, i = sims.topk(min(kc, sims.shape[1]), dim=1)  # (q, <=kc)
            del sims  # free before the next block is allocated
            i += b0
            if best_v is not None:
                v, j = torch.cat([best_v, v], dim=1).topk(
                    min(kc, best_v.shape[1] + v.shape[1]), dim=1
                )
                i = torch.cat([best_i, i], dim=1).gather(1, j)
            best_v, best_i = v, i
        return best_v, best_i

    return search


def _total_order_topk(sims: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row by (-similarity, index): sort by index, then stable sort by similarity."""
    by_index = ids.argsort(dim=1)  # rows hold distinct indices
    sims, ids = sims.gather(1, by_index), ids.gather(1, by_index)
    sims, order = sims.sort(dim=1, descending=True, stable=True)
    return sims[:, :k], ids.gather(1, order[:, :k])


def _canonical_ranking(
    queries: Tensor, bank: Tensor, cand: Tensor, k: int, bank_norms: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Top-k of ``cand`` (Q, C) by (-canonical similarity, index), gathering <= ~8 MiB at once."""
    row_bytes = bank.shape[1] * 4
    if cand.shape[1] * row_bytes > _RESCORE_BYTES:  # few queries with many candidates (exact scan)
        width = max(k, _RESCORE_BYTES // row_bytes)
        sims, ids = [], []
        for r in range(cand.shape[0]):
            best = None
            for c0 in range(0, cand.shape[1], width):
                c = cand[r : r + 1, c0 : c0 + width]  # (1, w)
                v = canonical_dot(queries[r : r + 1], bank, c, bank_norms)  # (1, w)
                if best is not None:
                    v, c = torch.cat([best[0], v], dim=1), torch.cat([best[1], c], dim=1)
                best = _total_order_topk(v, c, k)
            sims.append(best[0])
            ids.append(best[1])
        return torch.cat(sims), torch.cat(ids)
    rows = max(1, _RESCORE_BYTES // (cand.shape[1] * row_bytes))
    sims, ids = [], []
    for r0 in range(0, cand.shape[0], rows):
        c = cand[r0 : r0 + rows]  # (r, C)
        v, i = _total_order_topk(canonical_dot(queries[r0 : r0 + rows], bank, c, bank_norms), c, k)
        sims.append(v)
        ids.append(i)
    return torch.cat(sims), torch.cat(ids)


def _exact_scan(
    queries: Tensor, bank: Tensor, k: int, bank_norms: Tensor, max_memory_mb: float
) -> tuple[Tensor, Tensor]:
    """Exact top-k for a few queries: float64 scan, then canonical ranking of all near-ties."""
    n, dim = bank.shape
    plan = plan_chunks(len(queries), n, max_memory_mb / 2)  # float64: half the entries
    scale = row_norms(queries) * bank_norms.max()  # (q,) bound of |q| |b|
    margin = 4 * 1.05 * dim * 2.0**-53 * scale + 2.0**-22 * scale  # 2x f64 error + 2 float32 ulps
    sims, ids = [], []
    for q0 in range(0, len(queries), plan.query_chunk):
        q64 = queries[q0 : q0 + plan.query_chunk].double()  # (q, D)
        best = None
        for b0 in range(0, n, plan.bank_chunk):
            s = q64 @ bank[b0 : b0 + plan.bank_chunk].double().T  # (q, bc) the bounded block
            top = s.topk(min(k, s.shape[1]), dim=1).values
            del s
            best = top if best is None else torch.cat([best, top], dim=1).topk(k, dim=1).values
        # Rows scoring below the k-th best minus the margin cannot reach the canonical top-k.
        floor = best[:, -1] - margin[q0 : q0 + len(q64)]  # (q,)
        hits_r, hits_c = [], []
        for b0 in range(0, n, plan.bank_chunk):
            s = q64 @ bank[b0 : b0 + plan.bank_chunk].double().T  # (q, bc)
            r, c = (s >= floor[:, None]).nonzero(as_tuple=True)
            del s
            hits_r.append(r)
            hits_c.append(c + b0)
        rows, cols = torch.cat(hits_r), torch.cat(hits_c)
        for row in range(len(q64)):
            cand = cols[rows == row][None]  # (1, C), C >= k
            v, i = _canonical_ranking(queries[q0 + row : q0 + row + 1], bank, cand, k, bank_norms)
            sims.append(v)
            ids.append(i)
    return torch.cat(sims), torch.cat(ids)


def run_search(
    bank: Tensor,
    queries: Tensor,
    k: int,
    candidates: Callable[[Tensor, int], tuple[Tensor, Tensor]],
    *,
    certify: bool,
    unit_roundoff: float,
    plan: ChunkPlan,
    max_memory_mb: float,
) -> NeighborResult:
    """Candidates -> canonical re-ranking -> certificate -> exact scan where it fails.

    ``bank`` and ``queries`` are prepared (normalised, same device); ``candidates(q, kc)`` returns
    float32 scores (descending) and int64 rows, -1 for missing rows (IVF).
    """
    n, dim = bank.shape
    kc = min(k + MARGIN, n)
    bank_norms = row_norms(bank)  # (N,) float64 upper bounds
    bank_max = bank_norms.max()
    sims, ids, failed = [], [], []
    for q0 in range(0, len(queries), plan.query_chunk):
        qb = queries[q0 : q0 + plan.query_chunk]  # (q, D)
        cand_v, cand_i = candidates(qb, kc)  # (q, kc)
        ok = (cand_i >= 0).all(dim=1)
        v, i = _canonical_ranking(qb, bank, cand_i.clamp(min=0), k, bank_norms)  # (q, k)
        if certify and kc < n:
            scale = row_norms(qb) * bank_max  # (q,) bound of |q| |b|
            eps = 1.05 * dim * unit_roundoff * scale + 2.0**-22 * scale
            ok &= v[:, -1].double() > cand_v[:, -1].double() + eps
        sims.append(v)
        ids.append(i)
        failed.append((~ok).nonzero().squeeze(1) + q0)
    sims_t, ids_t, failed_t = torch.cat(sims), torch.cat(ids), torch.cat(failed)
    if len(failed_t):
        v, i = _exact_scan(queries[failed_t], bank, k, bank_norms, max_memory_mb)
        sims_t[failed_t], ids_t[failed_t] = v, i
    return NeighborResult(sims_t, ids_t, num_exact_fallback=len(failed_t))


def knn_search(
    bank: Tensor | np.ndarray,
    queries: Tensor | np.ndarray,
    k: int,
    *,
    backend: str = "auto",
    index: str = "flat",
    normalize: bool = True,
    nlist: int = 1024,
    nprobe: int = 32,
    chunk_size: int | None = None,
    max_memory_mb: float = 256,
) -> NeighborResult:
    """The ``k`` most similar bank rows of every query (cosine when ``normalize``).

    Args:
        bank: (N, D) features to search in (torch backend runs on its device).
        queries: (Q, D) features to search for.
        k: neighbours per query, 1 <= k <= N.
        backend: ``auto`` | ``torch`` | ``faiss``; flat search returns identical results on all.
        index: ``flat`` (exact) | ``ivf`` (approximate faiss IVF; candidates may miss neighbours).
        normalize: L2-normalise both sides first, so similarity = cosine.
        nlist, nprobe: IVF cells and cells scanned per query.
        chunk_size: queries per similarity block; None = derived from ``max_memory_mb``.
        max_memory_mb: MiB bound of the similarity block (see module docstring).
    """
    backend = resolve_backend(backend, index)
    bank_t, queries_t = as_features(bank, "bank"), as_features(queries, "queries")
    _check_queries(bank_t.shape, queries_t, k)
    bank_t = _normalized(bank_t, normalize)
    queries_t = _normalized(queries_t.to(bank_t.device), normalize)
    if backend == "faiss":
        built = FaissIndex.build(bank_t, index=index, normalize=False, nlist=nlist, nprobe=nprobe)
        return built.search(
            queries_t, k, backend="faiss", chunk_size=chunk_size, max_memory_mb=max_memory_mb
        )
    plan = plan_chunks(len(queries_t), len(bank_t), max_memory_mb, chunk_size)
    return run_search(
        bank_t,
        queries_t,
        k,
        _torch_candidates(bank_t, plan),
        certify=True,
        unit_roundoff=_MATMUL_ROUNDOFF[torch.get_float32_matmul_precision()],
        plan=plan,
        max_memory_mb=max_memory_mb,
    )


class FaissIndex:
    """A faiss index over a gallery (for kNN eval and retrieval demos), with save/load.

    ``search`` returns the same :class:`NeighborResult` as :func:`knn_search`: exact re-ranked
    similarities and indices. Flat indices share their vector storage with torch (zero copy); IVF
    indices keep a separate float32 copy of the gallery for the exact re-ranking (2x memory).
    """

    def __init__(self, index, vectors: Tensor, *, normalize: bool, kind: str) -> None:
        self.index = index  # faiss.Index (inner-product metric)
        self.vectors = vectors  # (N, D) float32 gallery as searched (normalised if `normalize`)
        self.normalize = normalize  # queries are L2-normalised before search
        self.kind = kind  # "flat" | "ivf"

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @classmethod
    def build(
        cls,
        bank: Tensor | np.ndarray,
        *,
        index: str = "flat",
        normalize: bool = True,
        nlist: int = 1024,
        nprobe: int = 32,
        seed: int = 0,
    ) -> FaissIndex:
        """Index ``bank`` (N, D). IVF trains k-means with ``min(nlist, N // 39)`` cells (faiss
        needs >= 39 points per cell) on the whole bank, seeded by ``seed``."""
        faiss = _import_faiss()
        _check_choice(index, INDEX_KINDS, "knn index")
        vectors = as_features(bank, "bank").cpu()
        vectors = _normalized(vectors, normalize)
        n, dim = vectors.shape
        x = vectors.numpy()
        if index == "flat":
            built = faiss.IndexFlatIP(dim)
            built.add(x)
            return cls(built, cls._flat_storage(built), normalize=normalize, kind="flat")
        if nlist < 1 or nprobe < 1:
            raise UserError(f"nlist={nlist} and nprobe={nprobe} must be >= 1")
        cells = max(1, min(nlist, n // 39))
        built = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        built.cp.seed = seed
        built.train(x)
        built.add(x)
        built.nprobe = min(nprobe, cells)
        return cls(built, vectors.clone(), normalize=normalize, kind="ivf")

    @staticmethod
    def _flat_storage(index) -> Tensor:
        import faiss

        flat = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
        return torch.from_numpy(
            flat.reshape(index.ntotal, index.d)
        )  # view; self.index keeps it alive

    def _faiss_candidates(self, queries: Tensor, kc: int) -> tuple[Tensor, Tensor]:
        vals, idx = self.index.search(queries.cpu().numpy(), kc)  # (q, kc) each
        return torch.from_numpy(vals), torch.from_numpy(idx).long()

    def search(
        self,
        queries: Tensor | np.ndarray,
        k: int,
        *,
        backend: str = "auto",
        chunk_size: int | None = None,
        max_memory_mb: float = 256,
    ) -> NeighborResult:
        """The ``k`` nearest gallery rows of each query (Q, D); results on CPU."""
        backend = resolve_backend(backend, self.kind)
        queries_t = as_features(queries, "queries").cpu()
        _check_queries(self.vectors.shape, queries_t, k)
        queries_t = _normalized(queries_t, self.normalize)
        plan = plan_chunks(len(queries_t), len(self), max_memory_mb, chunk_size)
        if backend == "torch":
            candidates, roundoff = (
                _torch_candidates(self.vectors, plan),
                _MATMUL_ROUNDOFF[torch.get_float32_matmul_precision()],
            )
        else:
            candidates, roundoff = self._faiss_candidates, 2.0**-24  # faiss-cpu: IEEE float32 sgemm
            if chunk_size is None:
                # faiss bounds its own similarity blocks (4096 x 1024 floats); large calls keep
                # its threads busy, our chunk only bounds the (q, k) result buffers.
                plan = ChunkPlan(min(len(queries_t), _FAISS_QUERY_CHUNK), len(self))
        return run_search(
            self.vectors,
            queries_t,
            k,
            candidates,
            certify=self.kind == "flat",
            unit_roundoff=roundoff,
            plan=plan,
            max_memory_mb=max_memory_mb,
        )

    def save(self, path: str | Path) -> None:
        """Write one ``.npz`` file holding the serialised faiss index and its settings."""
        faiss = _import_faiss()
        meta = json.dumps({"format": 1, "normalize": self.normalize, "kind": self.kind})
        arrays = {"index": faiss.serialize_index(self.index), "meta": np.array(meta)}
        if self.kind == "ivf":
            arrays["vectors"] = self.vectors.numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FaissIndex:
        """Read an index written by :meth:`save`."""
        faiss = _import_faiss()
        if not Path(path).is_file():
            raise UserError(
                f"no faiss index at {path}; build one with FaissIndex.build(...).save(path)"
            )
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            index = faiss.deserialize_index(data["index"])
            vectors = torch.from_numpy(data["vectors"].copy()) if meta["kind"] == "ivf" else None
        if meta["kind"] == "flat":
            vectors = cls._flat_storage(index)
        return cls(index, vectors, normalize=meta["normalize"], kind=meta["kind"])


def build_index(bank: Tensor | np.ndarray, **kwargs) -> FaissIndex:
    """Shorthand for :meth:`FaissIndex.build` (kwargs: index, normalize, nlist, nprobe, seed)."""
    return FaissIndex.build(bank, **kwargs)
