"""Domain descriptions used as keyword priors by the learned router.

Short phrases naming the concepts and jargon of each skill domain, written from general domain
knowledge. They deliberately name **no products or projects**: an earlier version listed tools
(Argo CD, Vite, dbt, ...) picked after seeing the repository names in the shared
``routing/dev.jsonl``, which made cross-validated figures on that file optimistic. Tool
vocabulary now reaches the router only through the training rows and the bundled synthetic
samples. The phrases are embedded and added to the training data as extra labelled examples.
"""

from __future__ import annotations

DOMAIN_PRIORS: dict[str, list[str]] = {
    "dataeng": [
        "data pipeline extract transform load job",
        "batch and streaming data processing",
        "data warehouse table schema and partitions",
        "SQL query on a large table is slow",
        "columnar file format and data lake storage",
        "scheduled workflow of data ingestion tasks",
        "message queue topic consumer lag",
        "change data capture from a database",
        "data quality checks and data lineage",
        "incremental load and backfill of historical data",
    ],
    "devops": [
        "container orchestration cluster and pods",
        "infrastructure as code provisioning cloud resources",
        "continuous integration and deployment pipeline",
        "build a container image and push it to a registry",
        "configuration management of servers",
        "monitoring, alerting and logging of services",
        "load balancer, DNS and TLS certificates",
        "secrets, access control and service accounts",
        "release rollout, rollback and deployment strategy",
        "virtual machines, networking and cloud accounts",
    ],
    "api": [
        "REST API endpoint and HTTP method",
        "request validation and response status codes",
        "API authentication with tokens and middleware",
        "web framework routes and request handlers",
        "API schema, specification and documentation",
        "pagination, versioning and rate limiting of an API",
        "JSON serialization of request and response bodies",
        "query language schema with resolvers and mutations",
        "cross-origin requests, websockets and server-sent events",
        "backend service exposing endpoints to clients",
    ],
    "frontend": [
        "user interface component state and props",
        "styling with CSS layout and responsive design",
        "browser rendering, DOM events and page load",
        "single page application client-side routing",
        "JavaScript bundler, dev server and hot reload",
        "server-side rendering and hydration of pages",
        "state management store in a web app",
        "forms, buttons, modals and accessibility",
        "TypeScript typing of UI components",
        "animations, themes and visual design of a website",
    ],
    "ml": [
        "training a neural network model",
        "deep learning tensors, layers and gradients",
        "GPU memory and distributed training",
        "model inference, quantization and serving",
        "fine-tuning a pretrained language model",
        "dataset loading, batching and augmentation",
        "loss, optimizer and learning rate schedule",
        "model checkpoints and weights",
        "evaluation metrics, accuracy and overfitting",
        "embeddings, attention and transformer architecture",
    ],
}


def prior_examples(domains: list[str] | None = None) -> tuple[list[str], list[str]]:
    """``(texts, domains)`` of the priors, restricted to ``domains`` when given."""
    texts: list[str] = []
    labels: list[str] = []
    for domain, phrases in DOMAIN_PRIORS.items():
        if domains is None or domain in domains:
            texts += phrases
            labels += [domain] * len(phrases)
    return texts, labels
