# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Vector-search kernels: exact and compressed inner-product top-k, nogil + OpenMP.

Two paths, chosen by batch size:

Row blocks are scanned in parallel (``prange``); each thread scores its block and keeps
its own per-query heaps (merged at the end). A block is scored by

* few queries (< ``BATCH_MIN``): the AVX-512 tile kernels of ``vs_kernels.h`` reading
  float32, float16 or int8 rows directly. This is memory-bound, so compressed rows are
  scanned about 2x / 4x faster.
* many queries: one BLAS ``sgemm`` (scipy's ``cython_blas``, single-threaded per call)
  after dequantising compressed rows into a thread-local float32 block.

Scores are optionally multiplied by a per-row scale (int8 scales, cosine 1/norms).
Results are sorted best first; ties go to the lower row index (as a stable argsort).
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.stdint cimport int8_t, int64_t, uint16_t
from libc.stdlib cimport free, malloc
from scipy.linalg.cython_blas cimport sgemm

cimport openmp

cnp.import_array()

cdef extern from "vs_kernels.h" nogil:
    void vs_block_f32(const float *Q, int64_t nq, const float *X, int64_t nrows, int64_t d,
                      float *out, int64_t ld)
    void vs_block_f16(const float *Q, int64_t nq, const uint16_t *X, int64_t nrows, int64_t d,
                      float *out, int64_t ld)
    void vs_block_i8(const float *Q, int64_t nq, const int8_t *X, int64_t nrows, int64_t d,
                     float *out, int64_t ld)
    void vs_dequant_f16(const uint16_t *X, int64_t count, float *out)
    void vs_dequant_i8(const int8_t *X, int64_t count, float *out)
    void vs_heap_push(float *hs, int64_t *hi, int64_t k, int64_t *size, float s, int64_t idx)
    void vs_select(const float *scores, int64_t n, int64_t row0, const float *row_scale,
                   float *hs, int64_t *hi, int64_t k, int64_t *size)
    int vs_sort_heap(const float *hs, const int64_t *hi, int64_t size, float *out_s,
                     int64_t *out_i)

cdef enum:
    BATCH_MIN = 8        # from this many queries on, score blocks with BLAS sgemm
    SCAN_BLOCK = 512     # rows per parallel block with the tile kernels
    GEMM_BLOCK = 1024    # rows per parallel block with sgemm
    QUERY_CHUNK = 256    # queries per pass (bounds the per-thread score buffers)
KINDS = {"float32": 0, "float16": 1, "int8": 2}

_blas_controller = None


def max_threads():
    """OpenMP threads the kernels use (``OMP_NUM_THREADS`` caps it)."""
    return openmp.omp_get_max_threads()


def _single_threaded_blas():
    """Each OpenMP thread calls sgemm on its own block: keep BLAS from spawning its own
    thread pool meanwhile (two spinning pools on the same cores collapse throughput)."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


cdef void _score_block(int kind, const float *Q, int64_t nq, const char *X, int64_t row0,
                       int64_t nrows, int64_t d, float *out, float *deq) noexcept nogil:
    """Scores of nq queries x nrows rows into out (row-major nq x nrows)."""
    cdef int m = <int>nrows, ncols = <int>nq, kdim = <int>d
    cdef float one = 1.0, zero = 0.0
    cdef char transa = b"T", transb = b"N"
    cdef const float *rows
    if nq < BATCH_MIN:
        if kind == 0:
            vs_block_f32(Q, nq, <const float *>X + row0 * d, nrows, d, out, nrows)
        elif kind == 1:
            vs_block_f16(Q, nq, <const uint16_t *>X + row0 * d, nrows, d, out, nrows)
        else:
            vs_block_i8(Q, nq, <const int8_t *>X + row0 * d, nrows, d, out, nrows)
        return
    if kind == 0:
        rows = <const float *>X + row0 * d
    else:
        if kind == 1:
            vs_dequant_f16(<const uint16_t *>X + row0 * d, nrows * d, deq)
        else:
            vs_dequant_i8(<const int8_t *>X + row0 * d, nrows * d, deq)
        rows = deq
    # column-major view: S^T (nrows x nq) = rows (nrows x d, stored as d x nrows) . Q^T
    sgemm(&transa, &transb, &m, &ncols, &kdim, &one, <float *>rows, &kdim, <float *>Q, &kdim,
          &zero, out, &m)


def topk_scan(const float[:, ::1] queries, cnp.ndarray data, Py_ssize_t k,
              row_scale=None, int num_threads=0):
    """Top-``k`` rows of ``data`` by (scaled) inner product with each query.

    ``data`` is a C-contiguous 2-D float32, float16 or int8 array; ``row_scale`` an
    optional float32 vector multiplied into each row's score. Returns
    ``(scores float32 (nq, kk), indices int64 (nq, kk))`` with ``kk = min(k, n)``.
    """
    if data.ndim != 2 or not data.flags.c_contiguous:
        raise ValueError("data must be a C-contiguous 2-D array")
    if data.dtype.name not in KINDS:
        raise ValueError(f"data dtype must be one of {sorted(KINDS)}, got {data.dtype}")
    cdef int kind = KINDS[data.dtype.name]
    cdef int64_t nq = queries.shape[0], n = data.shape[0], d = data.shape[1]
    if queries.shape[1] != d:
        raise ValueError(f"dimension mismatch: queries have {queries.shape[1]}, matrix has {d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cdef const float[::1] scale_view
    cdef const float *scale = NULL
    if row_scale is not None:
        scale_view = row_scale
        if scale_view.shape[0] != n:
            raise ValueError(f"row_scale has {scale_view.shape[0]} entries for {n} rows")
        scale = &scale_view[0]
    cdef int64_t kk = min(k, n), q0, nqc
    out_s = np.empty((nq, kk), dtype=np.float32)
    out_i = np.empty((nq, kk), dtype=np.int64)
    if nq == 0 or kk == 0:
        return out_s, out_i
    cdef int nt = num_threads if num_threads > 0 else openmp.omp_get_max_threads()
    cdef const char *X = <const char *>cnp.PyArray_DATA(data)
    with _single_threaded_blas():
        for q0 in range(0, nq, QUERY_CHUNK):
            nqc = min(QUERY_CHUNK, nq - q0)
            _scan(kind, &queries[q0, 0], nqc, X, n, d, kk, scale, nt, out_s[q0:q0 + nqc],
                  out_i[q0:q0 + nqc])
    return out_s, out_i


cdef _scan(int kind, const float *Q, int64_t nq, const char *X, int64_t n, int64_t d,
           int64_t kk, const float *scale, int nt, float[:, ::1] os, int64_t[:, ::1] oi):
    """Parallel over row blocks; each thread keeps its own heaps, merged at the end."""
    cdef int64_t block = SCAN_BLOCK if nq < BATCH_MIN else GEMM_BLOCK
    cdef int64_t nblocks = (n + block - 1) // block
    cdef float[:, :, ::1] hs = np.empty((nt, nq, kk), dtype=np.float32)
    cdef int64_t[:, :, ::1] hi = np.empty((nt, nq, kk), dtype=np.int64)
    cdef int64_t[:, ::1] sizes = np.zeros((nt, nq), dtype=np.int64)
    cdef float[:, ::1] bufs = np.empty((nt, nq * block), dtype=np.float32)
    cdef float[:, ::1] deqs = np.empty((nt, block * d if kind != 0 else 1), dtype=np.float32)
    cdef int64_t b, r0, nr, q
    cdef int tid
    for b in prange(nblocks, nogil=True, num_threads=nt, schedule="dynamic"):
        tid = threadid()
        r0 = b * block
        nr = min(block, n - r0)
        _score_block(kind, Q, nq, X, r0, nr, d, &bufs[tid, 0], &deqs[tid, 0])
        for q in range(nq):
            vs_select(&bufs[tid, q * nr], nr, r0, scale, &hs[tid, q, 0], &hi[tid, q, 0], kk,
                      &sizes[tid, q])
    _finish(hs, hi, sizes, nt, kk, os, oi)


cdef _finish(float[:, :, ::1] hs, int64_t[:, :, ::1] hi, int64_t[:, ::1] sizes, int nt,
             int64_t kk, float[:, ::1] os, int64_t[:, ::1] oi):
    """Merge per-thread heaps (axis 0) into one per query and sort best first."""
    cdef int64_t nq = hs.shape[1], q, j, size
    cdef int t, failed = 0
    cdef int merge_threads = nt if nq * kk >= 4096 else 1  # waking threads costs more
    for q in prange(nq, nogil=True, num_threads=merge_threads):
        size = sizes[0, q]
        for t in range(1, hs.shape[0]):
            for j in range(sizes[t, q]):
                vs_heap_push(&hs[0, q, 0], &hi[0, q, 0], kk, &size, hs[t, q, j], hi[t, q, j])
        if size != kk or vs_sort_heap(&hs[0, q, 0], &hi[0, q, 0], size, &os[q, 0], &oi[q, 0]):
            failed += 1
    if failed:
        raise MemoryError("top-k merge failed")
