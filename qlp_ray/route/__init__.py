"""Routing maths: which adapter should answer a request.

Sentence embeddings (MiniLM through sentence-transformers or an OpenVINO IR, with padded or
packed batches), the centroid router, the learned router (fine-tuned embedder, kNN or
gating head, lexical n-gram model), top-k stacks, domain classification for dataset
building, repository-grouped evaluation, and top-k vector search (Cython kernels, numpy
fallback). Pure: no Ray; the Serve router (:mod:`qlp_ray.serve.router`) wraps it.
"""
