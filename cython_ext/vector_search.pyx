# cython: boundscheck=False, wraparound=False, cdivision=True
"""Vector-search kernels (inner-product top-k). Compiled at install time.

The foundation ships only the exact float32 inner-product scorer; the hardware
issue extends it (top-k selection in C, compressed variants, OpenMP).
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange

cnp.import_array()


def inner_products(const float[:, ::1] queries, const float[:, ::1] matrix):
    """Return the (n_queries, n_rows) matrix of inner products, computed in parallel."""
    cdef Py_ssize_t nq = queries.shape[0], n = matrix.shape[0], d = matrix.shape[1]
    if queries.shape[1] != d:
        raise ValueError(f"dimension mismatch: queries have {queries.shape[1]}, matrix has {d}")
    out = np.empty((nq, n), dtype=np.float32)
    cdef float[:, ::1] o = out
    cdef Py_ssize_t i, j, k
    cdef float acc
    for i in range(nq):
        for j in prange(n, nogil=True, schedule="static"):
            acc = 0.0
            for k in range(d):
                acc = acc + queries[i, k] * matrix[j, k]
            o[i, j] = acc
    return out
