"""Retrieval benchmark: pgvector HNSW against an exact scan, at 10k and 100k chunks, on real
all-MiniLM-L6-v2 embeddings; and ingestion throughput.

A throw-away embedded Postgres 18 + pgvector (migrated like production). The corpus: 100k
short texts made of two random 8-word spans of the demo corpus (real language, all distinct),
embedded once and cached in var/bench (about 6 minutes on 2 cores the first time). Vectors are
loaded with COPY before the HNSW index is built (much faster than inserting into an indexed
table). Queries: the 75 questions of tests/data/rag_eval.json and 125 held-out spans.

Per size: latency p50/p99 of `chunks_search` (the worker's retrieval query, top 10) with HNSW
at several ef_search values (SLUICE_HNSW_EF_SEARCH is the default) and exact; recall@10 of
HNSW against exact; index build time.
Ingestion: extract + chunk + embed + store through `document_ingest`, in chunks per second.

    python -m bench --only rag        (or python -m bench.rag [--sizes 10000,100000])
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.ratelimit import percentile
from config import env
from config.embedded import EmbeddedPostgres

ROOT = env.BASE_DIR
CACHE = env.var_dir() / "bench" / "rag"
SEED = 1234
QUERIES = 200


def corpus_words() -> list[str]:
    text = " ".join(p.read_text() for p in sorted((ROOT / "inference" / "demo" / "corpus").rglob("*.txt")))
    return re.findall(r"[A-Za-z][A-Za-z'’-]*[.,;!?]?", text)  # noqa: RUF001 - curly apostrophes occur


def make_texts(n: int, seed: int) -> list[str]:
    words = corpus_words()
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        a, b = rng.randrange(len(words) - 8), rng.randrange(len(words) - 8)
        text = " ".join(words[a : a + 8]) + " " + " ".join(words[b : b + 8])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def embeddings(texts: list[str], label: str) -> np.ndarray:
    from inference.rag.services import local_embedder

    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"{label}-{len(texts)}-{digest}.npy"
    if path.exists():
        return np.load(path)
    started = time.time()
    print(f"  embedding {len(texts)} texts ({label}; cached in {path.parent} afterwards)...", flush=True)
    vectors = local_embedder().embed(texts, batch_size=128)
    print(f"  ... {len(texts) / (time.time() - started):.0f} texts/s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in vector) + "]"


def load_chunks(kb: Any, texts: list[str], vectors: np.ndarray, start: int) -> None:
    """COPY rows start.. into the chunk table (one document per 1000 chunks)."""
    from django.db import connection

    from inference.models import Document

    documents: dict[int, str] = {}
    for block in range(start // 1000, (len(texts) + 999) // 1000):
        doc, _ = Document.objects.get_or_create(
            knowledge_base=kb,
            name=f"bench-{block:04d}",
            defaults={"content_type": "text/plain", "status": "ready"},
        )
        documents[block] = str(doc.id)
    columns = "document_id, knowledge_base_id, index, text, token_count, char_start, char_end, embedding"
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY inference_chunk ({columns}) FROM STDIN") as copy:
            for i in range(start, len(texts)):
                copy.write_row(
                    (
                        documents[i // 1000],
                        str(kb.id),
                        i % 1000,
                        texts[i],
                        20,
                        0,
                        len(texts[i]),
                        _vector_text(vectors[i]),
                    )
                )


def drop_index() -> None:
    """Loading into an indexed table inserts into the graph row by row: load first, then build."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS chunk_embedding_hnsw")


def build_index() -> float:
    from django.db import connection

    drop_index()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute(f"SET max_parallel_maintenance_workers = {max(0, len(os.sched_getaffinity(0)) - 1)}")
        started = time.perf_counter()
        cursor.execute(
            "CREATE INDEX chunk_embedding_hnsw ON inference_chunk "
            "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        elapsed = time.perf_counter() - started
        cursor.execute("ANALYZE inference_chunk")
    return elapsed


EF_SEARCH = (40, 64, 100, 160, 240)


def measure_size(kb: Any, queries: np.ndarray, size: int, index_s: float) -> list[dict[str, Any]]:
    """One row per HNSW ef_search (the recall/latency knob, SLUICE_HNSW_EF_SEARCH), each with
    the exact scan's latency and HNSW's recall@10 against it."""
    from inference.rag.selectors import chunks_search

    def timed(exact: bool, ef: int | None = None) -> tuple[list[float], list[list[int]]]:
        latencies, results = [], []
        for _ in range(3):  # warm the cache
            chunks_search(kb_ids=[kb.id], embedding=queries[0], top_k=10, exact=exact, ef_search=ef)
        for vector in queries:
            started = time.perf_counter()
            hits = chunks_search(kb_ids=[kb.id], embedding=vector, top_k=10, exact=exact, ef_search=ef)
            latencies.append((time.perf_counter() - started) * 1000)
            results.append([hit.chunk_id for hit in hits])
        return latencies, results

    exact_ms, exact_ids = timed(exact=True)
    rows = []
    for ef in EF_SEARCH:
        hnsw_ms, hnsw_ids = timed(exact=False, ef=ef)
        recall = statistics.fmean(
            len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(hnsw_ids, exact_ids, strict=True)
        )
        rows.append(
            {
                "chunks": size,
                "ef_search": ef,
                "queries": len(queries),
                "hnsw_p50_ms": round(percentile(hnsw_ms, 50), 2),
                "hnsw_p99_ms": round(percentile(hnsw_ms, 99), 2),
                "exact_p50_ms": round(percentile(exact_ms, 50), 2),
                "exact_p99_ms": round(percentile(exact_ms, 99), 2),
                "hnsw_recall_at_10": round(recall, 4),
                "index_build_s": round(index_s, 1),
            }
        )
    return rows


def measure_ingestion() -> list[dict[str, Any]]:
    """Two shapes of upload: many one-chunk documents (per-document overhead shows) and a few
    long ones (embedding dominates)."""
    from django.contrib.auth.models import User

    from inference.models import Chunk, Document
    from inference.rag.services import document_ingest, knowledge_base_create, local_embedder

    local_embedder().embed(["warm-up"])
    owner, _ = User.objects.get_or_create(username="bench-ingest")
    evaluation = json.loads((ROOT / "tests" / "data" / "rag_eval.json").read_text())
    small = [(d["name"], d["text"].encode()) for d in evaluation["documents"]]
    words = corpus_words()
    long = [(f"long-{i}.txt", " ".join(words[i * 2000 : i * 2000 + 6000]).encode()) for i in range(4)]
    rows = []
    for label, documents in (("225 one-chunk documents", small), ("4 long documents", long)):
        kb = knowledge_base_create(owner=owner, name=label)
        # Rows as an upload leaves them (without queueing a task: this process ingests them).
        uploaded = [
            Document.objects.create(
                knowledge_base=kb, name=name, raw=raw, content_type="text/plain", size_bytes=len(raw)
            )
            for name, raw in documents
        ]
        started = time.perf_counter()
        for document in uploaded:
            document_ingest(document_id=str(document.id), revision=document.revision)
        elapsed = time.perf_counter() - started
        chunks = Chunk.objects.filter(knowledge_base=kb).count()
        rows.append(
            {
                "upload": label,
                "chunks": chunks,
                "seconds": round(elapsed, 2),
                "chunks_per_s": round(chunks / elapsed, 1),
            }
        )
    return rows


def run(sizes: list[int]) -> dict[str, Any]:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from inference.rag.services import knowledge_base_create

    call_command("migrate", "--noinput", verbosity=0)
    texts = make_texts(max(sizes), SEED)
    vectors = embeddings(texts, "corpus")
    evaluation = json.loads((ROOT / "tests" / "data" / "rag_eval.json").read_text())
    query_texts = [q["question"] for q in evaluation["questions"]] + make_texts(QUERIES - 75, SEED + 1)
    queries = embeddings(query_texts, "queries")
    owner, _ = User.objects.get_or_create(username="bench")
    kb = knowledge_base_create(owner=owner, name="bench")
    rows: list[dict[str, Any]] = []
    loaded = 0
    for size in sorted(sizes):
        drop_index()
        started = time.perf_counter()
        load_chunks(kb, texts[:size], vectors, loaded)
        print(f"  loaded {size - loaded} chunks in {time.perf_counter() - started:.1f}s", flush=True)
        loaded = size
        index_s = build_index()
        for row in measure_size(kb, queries, size, index_s):
            rows.append(row)
            print(f"  {row}", flush=True)
    return {"retrieval": rows, "ingestion": measure_ingestion()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-rag-"))
    pg = EmbeddedPostgres(root / "pg").start()
    try:
        pg.ensure_database("sluice")
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "config.settings.local",
                "DATABASE_URL": pg.url("sluice"),
                "REDIS_URL": "redis://127.0.0.1:1/0",  # never used: nothing here is queued
                "SLUICE_EMBEDDING_THREADS": str(len(os.sched_getaffinity(0))),
                "SLUICE_LOG_LEVEL": "WARNING",
            }
        )
        result = run([int(s) for s in args.sizes.split(",") if s])
    finally:
        pg.stop()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
