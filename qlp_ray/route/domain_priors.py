"""Domain descriptions used as keyword priors by the learned router.

Short phrases naming the tools and jargon of each skill domain, written by hand from general
domain knowledge, not fitted to any data set. Caveat for figures on the shared
``routing/dev.jsonl``: their author had seen that file's repository names (e.g. Argo CD,
Vite, Next.js appear in both), so cross-validated numbers that use the priors may be slightly
optimistic; ``benchmarks/router_eval.py --ablations`` reports the learned mode without them.
They are embedded and added to the training data as extra labelled examples.
"""

from __future__ import annotations

DOMAIN_PRIORS: dict[str, list[str]] = {
    "dataeng": [
        "data pipeline ETL job",
        "Apache Spark DataFrame SQL query",
        "Kafka topic consumer connector streaming",
        "Airflow DAG scheduler task",
        "dbt model incremental materialization",
        "data warehouse table partition schema",
        "Parquet Avro file format",
        "Hive metastore Trino Presto query engine",
        "batch ingestion sync source destination connector",
        "Delta Lake Iceberg table",
        "CDC replication database sync",
        "SQL join aggregation performance",
    ],
    "devops": [
        "Kubernetes pod deployment cluster",
        "Helm chart values release",
        "Terraform module provider infrastructure",
        "Ansible playbook role inventory",
        "CI/CD pipeline GitHub Actions Jenkins build",
        "Docker container image registry",
        "Argo CD sync GitOps application",
        "Prometheus alert monitoring Grafana",
        "AWS EKS GCP cloud infrastructure",
        "nginx ingress load balancer TLS certificate",
        "systemd service SSH server provisioning",
        "secrets vault RBAC permissions",
    ],
    "api": [
        "REST API endpoint route",
        "FastAPI Flask request handler",
        "GraphQL schema resolver query mutation",
        "HTTP status code response headers",
        "OpenAPI Swagger documentation",
        "authentication OAuth JWT token middleware",
        "API versioning pagination rate limiting",
        "JSON serialization request body validation",
        "CORS websocket server",
        "NestJS Express controller",
        "gRPC service client SDK",
        "web server request routing",
    ],
    "frontend": [
        "React component hooks state",
        "Vue component template reactivity",
        "CSS layout grid flexbox styling",
        "Vite bundler build plugin HMR",
        "Next.js hydration server-side rendering",
        "TypeScript types props",
        "Redux store actions reducers",
        "UI button modal design system",
        "browser DOM event rendering",
        "webpack JavaScript module bundle",
        "responsive page navigation router",
        "accessibility dark mode theme",
    ],
    "ml": [
        "PyTorch tensor model training",
        "neural network layer gradient",
        "GPU CUDA kernel distributed training",
        "transformer attention inference",
        "fine-tuning embeddings sentence transformers",
        "dataset dataloader batch size",
        "loss function optimizer learning rate",
        "model checkpoint weights quantization",
        "LLM serving vLLM tokens",
        "DeepSpeed FSDP mixed precision",
        "diffusion model image generation",
        "evaluation accuracy benchmark metrics",
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
