"""Domain classification for dataset building: the router's centroid classifier
(cosine to per-domain centroids of sentence embeddings) with keyword hints as a prior.

``p(d | x) ∝ softmax(cos(x, c_d) / T) · prior_d(x)``, where ``prior_d = 1 + s · hits_d``
counts the domain's hint keywords (whole words) in the text and tech stack. With no
hits the prior is flat and the router alone decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.route.centroid import CentroidRouter, RouteEntry, compute_centroid

EmbedFn = Callable[[list[str]], np.ndarray]

#: Hint keywords per seed domain (lower case, matched as whole words).
DOMAIN_KEYWORDS: dict[str, tuple[str, ...]] = {
    "dataeng": ("spark", "kafka", "airflow", "dbt", "etl", "elt", "parquet", "iceberg",
                "snowflake", "bigquery", "warehouse", "flink", "hive", "delta lake", "dag",
                "data pipeline", "cdc", "redshift"),
    "devops": ("kubernetes", "k8s", "kubectl", "docker", "helm", "terraform", "ansible",
               "prometheus", "grafana", "alertmanager", "nginx", "ci/cd", "github actions",
               "argocd", "pod", "hpa", "systemd", "deployment"),
    "api": ("rest", "graphql", "endpoint", "openapi", "grpc", "fastapi", "flask", "express",
            "pagination", "webhook", "rate limit", "oauth", "jwt", "http", "status code",
            "api"),
    "frontend": ("react", "vue", "angular", "css", "html", "next.js", "nextjs", "nuxt",
                 "svelte", "vite", "hydration", "dom", "tailwind", "redux", "component",
                 "webpack"),
    "ml": ("pytorch", "tensorflow", "fine-tune", "fine-tuning", "lora", "embedding",
           "embeddings", "cuda", "transformer", "transformers", "sklearn", "scikit-learn",
           "gradient", "overfitting", "hyperparameter", "training", "inference", "llm"),
}  # fmt: skip


def _keyword_patterns(keywords: dict[str, Sequence[str]]) -> dict[str, list[re.Pattern[str]]]:
    return {
        d: [re.compile(rf"(?<![\w.]){re.escape(k)}(?![\w])") for k in kws]
        for d, kws in keywords.items()
    }


@dataclass(frozen=True)
class DomainPrediction:
    domain: str
    confidence: float
    probs: dict[str, float]
    keyword_hits: dict[str, int]


class DomainClassifier:
    """Centroid router + keyword prior over a fixed list of domains."""

    def __init__(
        self,
        router: CentroidRouter,
        embed: EmbedFn,
        *,
        temperature: float = 0.05,
        prior_strength: float = 1.0,
        keywords: dict[str, Sequence[str]] | None = None,
    ) -> None:
        if temperature <= 0:
            raise InvalidRequest(f"classifier temperature must be > 0, got {temperature}")
        self.router = router
        self.embed = embed
        self.domains = [e.domain for e in router.entries]
        self.temperature = float(temperature)
        self.prior_strength = float(prior_strength)
        kws = DOMAIN_KEYWORDS if keywords is None else keywords
        self._patterns = _keyword_patterns({d: kws.get(d, ()) for d in self.domains})

    @classmethod
    def fit(
        cls, texts: Sequence[str], domains: Sequence[str], embed: EmbedFn, **kw: float
    ) -> DomainClassifier:
        """Centroids from labelled reference texts (each domain needs at least one)."""
        if len(texts) != len(domains) or not texts:
            raise InvalidRequest(
                f"need matching, non-empty texts and domains, got {len(texts)} and {len(domains)}"
            )
        vecs = np.asarray(embed(list(texts)), dtype=np.float32)
        labels = np.asarray(domains)
        entries = [
            RouteEntry(d, d, compute_centroid(vecs[labels == d])) for d in sorted(set(domains))
        ]
        return cls(CentroidRouter(entries, threshold=-1.0), embed, **kw)

    def keyword_hits(self, text: str) -> dict[str, int]:
        low = text.lower()
        return {d: sum(1 for p in pats if p.search(low)) for d, pats in self._patterns.items()}

    def classify(
        self, texts: Sequence[str], tech_stacks: Sequence[Sequence[str]] | None = None
    ) -> list[DomainPrediction]:
        """Domain, posterior confidence and per-domain probabilities for each text."""
        if not texts:
            return []
        decisions = self.router.route_batch(np.asarray(self.embed(list(texts)), np.float32))
        out = []
        for i, (text, dec) in enumerate(zip(texts, decisions, strict=True)):
            stack = " ".join(tech_stacks[i]) if tech_stacks is not None else ""
            hits = self.keyword_hits(f"{text} {stack}")
            sims = np.array([dec.scores[d] for d in self.domains], dtype=np.float64)
            logits = sims / self.temperature
            logits += np.log1p(self.prior_strength * np.array([hits[d] for d in self.domains]))
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            best = int(np.argmax(probs))
            out.append(
                DomainPrediction(
                    self.domains[best],
                    float(probs[best]),
                    {d: float(p) for d, p in zip(self.domains, probs, strict=True)},
                    hits,
                )
            )
        return out
