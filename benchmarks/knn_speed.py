"""kNN evaluation speed: our exact search (auto backend) versus raw torch and raw faiss flat search.

Random L2-normalised features (default: 50k x 512 bank, 10k queries, k = 200), all timed in one
run so the ratios share the machine's load. Baselines:

- torch raw: ``(queries @ bank.T).topk(k)`` in blocks of the same memory bound (no re-ranking);
- faiss raw: ``IndexFlatIP`` build + search (faiss' own threads and blocking).

Ours adds the exact re-ranking that makes torch and faiss results bit-identical. Usage:

    PYTHONPATH=. python benchmarks/knn_speed.py [--bank 50000 --queries 10000 --dim 512 --k 200]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from ssl_diffusion.eval.config import KNNConfig
from ssl_diffusion.eval.knn import KNNEvaluator, knn_search
from ssl_diffusion.eval.neighbors import plan_chunks


def torch_raw(bank: torch.Tensor, queries: torch.Tensor, k: int, max_memory_mb: int) -> torch.Tensor:
    plan = plan_chunks(len(queries), len(bank), max_memory_mb)
    out = []
    for q0 in range(0, len(queries), plan.query_chunk):
        q = queries[q0 : q0 + plan.query_chunk]
        best_v = best_i = None
        for b0 in range(0, len(bank), plan.bank_chunk):
            v, i = (q @ bank[b0 : b0 + plan.bank_chunk].T).topk(k, dim=1)
            i += b0
            if best_v is not None:
                v, j = torch.cat([best_v, v], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_v, best_i = v, i
        out.append(best_i)
    return torch.cat(out)


def faiss_raw(bank: torch.Tensor, queries: torch.Tensor, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank.numpy())
    return index.search(queries.numpy(), k)[1]


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--max-memory-mb", type=int, default=KNNConfig().max_memory_mb)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(args.bank, args.dim, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    labels = torch.randint(0, 100, (args.bank,), generator=g)
    query_labels = torch.randint(0, 100, (args.queries,), generator=g)
    print(f"bank {args.bank} x {args.dim}, {args.queries} queries, k={args.k}; "
          f"nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}")

    t_torch, _ = timed(torch_raw, bank, queries, args.k, args.max_memory_mb)
    t_faiss, _ = timed(faiss_raw, bank, queries, args.k)
    mem = args.max_memory_mb
    t_auto, auto = timed(knn_search, bank, queries, args.k, backend="auto", max_memory_mb=mem)
    t_ours_faiss, ours_faiss = timed(knn_search, bank, queries, args.k, backend="faiss", max_memory_mb=mem)
    cfg = KNNConfig(k=[10, 20, 100, args.k], max_memory_mb=mem)
    t_eval, _ = timed(KNNEvaluator(cfg).evaluate, bank, labels, queries, query_labels, 100)

    identical = torch.equal(auto.indices, ours_faiss.indices) and torch.equal(
        auto.similarities, ours_faiss.similarities
    )
    rows = [
        ("torch raw (matmul + topk)", t_torch),
        ("faiss raw (IndexFlatIP)", t_faiss),
        ("ours knn_search backend=auto", t_auto),
        ("ours knn_search backend=faiss", t_ours_faiss),
        (f"ours KNNEvaluator.evaluate (k={cfg.k})", t_eval),
    ]
    for name, t in rows:
        print(f"{name:<48s} {t:7.2f} s")
    print(f"ratio auto / torch raw:  {t_auto / t_torch:.2f}")
    print(f"ratio auto / faiss raw:  {t_auto / t_faiss:.2f}")
    print(f"auto and faiss backends identical: {identical}; "
          f"exact fallbacks: {auto.num_exact_fallback} (auto), {ours_faiss.num_exact_fallback} (faiss)")


if __name__ == "__main__":
    main()
