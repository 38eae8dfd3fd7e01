"""Slot-filled templates for the synthetic sample data (used only by ``synth.py``).

Each domain has slot pools and tasks. A task is a set of instruction phrasings, optional
inputs and one answer template. Slot values may be dicts so an answer can quote facts tied
to the chosen value (``{store[fmt]}``). Every domain's answers share one recognisable shape:

- dataeng:  ``Plan: ... Why: ...``
- devops:   ``Steps: 1) ... 2) ... Verify: ...``
- api:      ``Contract: ... Example: ... Pitfall: ...``
- frontend: ``Fix: ... Snippet: `...` Note: ...``
- ml:       ``Diagnosis: ... Try: ... Measure: ...``
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    """One kind of question: phrasings, optional inputs, and the answer template."""

    instructions: tuple[str, ...]
    output: str
    inputs: tuple[str, ...] = field(default=("",))


@dataclass(frozen=True)
class DomainTemplates:
    slots: dict[str, list]
    tasks: tuple[Task, ...]
    inputs: tuple[str, ...] = ()  # optional context lines for the ``input`` field


# Phrasing openers shared by all domains, so style lives in answers and vocabulary in slots.
CONTEXTS = [
    "",
    " in production",
    " for a small team",
    " without downtime",
    " on a tight budget",
    " in our staging setup",
    " as cleanly as possible",
    " for a new service",
]

DATAENG = DomainTemplates(
    slots={
        "table": [
            "orders",
            "clickstream events",
            "payments",
            "user profiles",
            "sensor readings",
            "inventory snapshots",
            "ad impressions",
            "shipment updates",
            "invoices",
            "support tickets",
            "page views",
            "subscriptions",
        ],
        "col": ["event_date", "customer_id", "region", "ingest_hour", "country_code", "tenant_id"],
        "store": [
            {"name": "Snowflake", "load": "COPY INTO from a stage", "fmt": "Parquet"},
            {"name": "BigQuery", "load": "a load job from GCS", "fmt": "Parquet"},
            {"name": "Redshift", "load": "COPY from S3", "fmt": "Parquet"},
            {"name": "Delta Lake", "load": "MERGE INTO", "fmt": "Delta"},
            {"name": "Apache Iceberg", "load": "MERGE INTO", "fmt": "Iceberg"},
            {"name": "ClickHouse", "load": "INSERT from S3", "fmt": "Parquet"},
        ],
        "src": [
            "Postgres",
            "MySQL",
            "MongoDB",
            "an S3 landing bucket",
            "a Kafka topic",
            "a SaaS REST export",
            "Oracle",
        ],
        "n": ["200 GB", "2 TB", "50 million rows", "3 billion rows", "800 GB", "10 TB"],
        "sched": ["hourly", "daily at 02:00", "every 15 minutes", "nightly", "weekly"],
    },
    tasks=(
        Task(
            (
                "How should I partition the {table} table in Spark{ctx}?",
                "What partitioning scheme fits a {n} {table} dataset written by Spark?",
                "Spark writes of {table} produce thousands of tiny files. How do I partition it?",
            ),
            "Plan: write with df.repartition('{col}').write.partitionBy('{col}').parquet(path) "
            "and keep files near 128-512 MB. Why: queries filtering on {col} prune whole "
            "directories, and fewer large files cut listing and scan overhead.",
        ),
        Task(
            (
                "Build an Airflow DAG that loads {table} from {src} into {store[name]} {sched}.",
                "How do I schedule the {sched} load of {table} from {src} to {store[name]} with "
                "Airflow{ctx}?",
                "Write the Airflow DAG outline for a {sched} {src} to {store[name]} "
                "sync of {table}.",
            ),
            "Plan: one DAG with schedule '{sched}', an extract task from {src} to Parquet in "
            "object storage, then load it into {store[name]} with {store[load]}; use retries=3 and "
            "catchup=False. Why: idempotent, date-partitioned loads let you rerun any interval "
            "safely.",
        ),
        Task(
            (
                "How do I capture changes from {src} into {store[name]} using CDC{ctx}?",
                "Set up change data capture for the {table} table in {src}.",
                "What is the right CDC pipeline from {src} to {store[name]} for {table}?",
            ),
            "Plan: stream {src} changes with Debezium into a Kafka topic per table, then apply "
            "them to {store[name]} with {store[load]} keyed on the primary key. Why: CDC moves "
            "only changed rows of {table}, keeps ordering per key and avoids full reloads.",
        ),
        Task(
            (
                "Our Kafka consumer for {table} lags behind{ctx}. How do I fix it?",
                "Kafka consumer lag keeps growing on the {table} topic. What should I check?",
                "How do I scale Kafka consumers reading {table} events?",
            ),
            "Plan: raise the partition count of the {table} topic, run one consumer per "
            "partition in the same group and batch writes downstream. Why: a consumer group "
            "cannot read faster than its partitions allow, and per-record writes dominate lag.",
        ),
        Task(
            (
                "How do I model {table} incrementally in dbt{ctx}?",
                "Write a dbt incremental model for {table} keyed on {col}.",
                "My dbt model for {table} rebuilds {n} every run. How do I make it incremental?",
            ),
            "Plan: use materialized='incremental' with unique_key and filter "
            "`where {col} > (select max({col}) from {{{{ this }}}})` inside is_incremental(). "
            "Why: dbt then merges only new {table} rows instead of rebuilding {n}.",
        ),
        Task(
            (
                "Should I store {table} as {store[fmt]} or CSV in the lake?",
                "Which file format is best for {n} of {table} queried from {store[name]}?",
                "Is {store[fmt]} worth it for the {table} data{ctx}?",
            ),
            "Plan: store {table} as {store[fmt]} with snappy or zstd compression, partitioned by "
            "{col}. Why: columnar files read only the needed columns, carry a schema and compress "
            "{n} far better than CSV.",
        ),
        Task(
            (
                "How do I deduplicate {table} records in a Spark job?",
                "Duplicate {table} rows appear after reprocessing. How do I make the job "
                "idempotent?",
                "Remove duplicate {table} events by {col} in PySpark{ctx}.",
            ),
            "Plan: keep the latest row per key with a window: row_number() over "
            "(partition by the key, {col} order by updated_at desc) = 1, then overwrite the "
            "affected partitions. Why: dynamic partition overwrite makes reruns idempotent.",
        ),
        Task(
            (
                "A Spark join of {table} with a small dimension table is slow. What can I do?",
                "How do I fix data skew when joining {table} on {col} in Spark?",
                "Spark stage on {table} has one task running for an hour. How do I fix the skew?",
            ),
            "Plan: broadcast the small side with broadcast(dim) and enable "
            "spark.sql.adaptive.skewJoin.enabled; salt hot {col} keys if one value dominates. "
            "Why: skewed keys put most of {n} on one task while the others idle.",
        ),
        Task(
            (
                "How do I add data quality checks to the {table} pipeline{ctx}?",
                "What tests should guard the {table} load into {store[name]}?",
            ),
            "Plan: add dbt tests (not_null and unique on the key, accepted_values on status) "
            "or Great Expectations checks, and fail the Airflow task on violation. Why: bad "
            "{table} rows are stopped before they reach {store[name]} dashboards.",
        ),
        Task(
            (
                "Backfill two years of {table} into {store[name]} without overloading {src}.",
                "How do I run a historical backfill of {table} from {src}?",
            ),
            "Plan: run the DAG per day with `airflow dags backfill`, max_active_runs=2, reading "
            "{src} replicas rather than the primary. Why: small date partitions retry cheaply "
            "and keep load on {src} bounded.",
        ),
    ),
    inputs=(
        "Stack: Spark 3.5 on EMR, Airflow 2.9, data in S3.",
        "Cluster: 8 executors with 16 GB each; jobs run daily.",
        "Warehouse costs doubled last month.",
        "Source tables have no updated_at column.",
        "Team of three data engineers, dbt Core in CI.",
    ),
)

DEVOPS = DomainTemplates(
    slots={
        "svc": [
            "checkout-api",
            "auth-service",
            "payments-worker",
            "search-indexer",
            "notification-service",
            "billing-api",
            "image-resizer",
            "gateway",
            "inventory-service",
            "reports-cron",
            "web-frontend",
            "ledger",
        ],
        "cloud": ["AWS", "GCP", "Azure"],
        "ci": ["GitHub Actions", "GitLab CI", "Jenkins", "CircleCI", "Buildkite"],
        "res": [
            {"name": "an S3 bucket", "tf": "aws_s3_bucket"},
            {"name": "an RDS instance", "tf": "aws_db_instance"},
            {"name": "a VPC", "tf": "aws_vpc"},
            {"name": "an EKS cluster", "tf": "aws_eks_cluster"},
            {"name": "an IAM role", "tf": "aws_iam_role"},
            {"name": "a security group", "tf": "aws_security_group"},
        ],
        "metric": [
            "p99 latency",
            "error rate",
            "CPU usage",
            "memory usage",
            "queue depth",
            "5xx responses",
            "disk usage",
        ],
        "env": ["staging", "production", "dev", "eu-west", "us-east"],
    },
    tasks=(
        Task(
            (
                "My {svc} pod is stuck in CrashLoopBackOff on Kubernetes. How do I debug it?",
                "The {svc} deployment keeps restarting in {env}. What should I check?",
                "Kubernetes shows CrashLoopBackOff for {svc}{ctx}. Where do I start?",
            ),
            "Steps: 1) `kubectl logs deploy/{svc} --previous` for the crash reason. "
            "2) `kubectl describe pod` for OOMKilled, failed probes or missing secrets. "
            "Verify: the pod stays Ready and the restart count stops rising.",
        ),
        Task(
            (
                "How do I package {svc} as a Helm chart{ctx}?",
                "Write the Helm setup to deploy {svc} to {env}.",
                "What goes into values.yaml for the {svc} Helm chart?",
            ),
            "Steps: 1) `helm create {svc}` and template the image, replicas and resources in "
            "values.yaml. 2) keep a values-{env}.yaml and run `helm upgrade --install {svc} "
            "./chart -f values-{env}.yaml`. Verify: `helm status {svc}` shows deployed.",
        ),
        Task(
            (
                "How do I create {res[name]} with Terraform on AWS{ctx}?",
                "Write Terraform for {res[name]} used by {svc}.",
                "Terraform plan wants to recreate {res[name]} in {env}. How do I avoid that?",
            ),
            "Steps: 1) declare a `{res[tf]}` resource with a remote S3 state backend and "
            "locking. 2) run `terraform plan` in CI and `terraform apply` only on main, with "
            "lifecycle prevent_destroy. Verify: a second plan shows no changes.",
        ),
        Task(
            (
                "Set up a {ci} pipeline that builds and deploys {svc}.",
                "How do I speed up the {ci} build of {svc}{ctx}?",
                "Write a {ci} pipeline that tests {svc} and deploys to {env}.",
            ),
            "Steps: 1) in {ci}, run lint and tests, build the Docker image with layer caching "
            "and push it tagged with the commit SHA. 2) deploy that tag to {env} behind a manual "
            "approval. Verify: the pipeline is green and {env} runs the new SHA.",
        ),
        Task(
            (
                "How do I alert on {metric} of {svc} with Prometheus?",
                "Write a Prometheus alert rule for high {metric} on {svc}.",
                "Our {svc} {metric} spikes go unnoticed{ctx}. How do I alert on them?",
            ),
            "Steps: 1) expose metrics from {svc} and add a PrometheusRule on {metric} over a "
            "5m rate with `for: 10m`. 2) route it in Alertmanager to the on-call receiver. "
            "Verify: the rule shows in /alerts and fires under a load test.",
        ),
        Task(
            (
                "The Docker image for {svc} is 2 GB. How do I shrink it?",
                "How do I write a production Dockerfile for {svc}{ctx}?",
                "Make the {svc} Docker build faster and the image smaller.",
            ),
            "Steps: 1) use a multi-stage Dockerfile: build in a full image, copy only artifacts "
            "into a slim or distroless base. 2) order layers so dependencies cache before source "
            "and add a .dockerignore. Verify: `docker images` shows the smaller size.",
        ),
        Task(
            (
                "How do I autoscale {svc} on Kubernetes based on {metric}?",
                "Configure a HorizontalPodAutoscaler for {svc} in {env}.",
            ),
            "Steps: 1) set CPU and memory requests on {svc}, then create an HPA with "
            "minReplicas 2 targeting {metric} via metrics-server or a Prometheus adapter. "
            "2) add a PodDisruptionBudget. Verify: `kubectl get hpa` shows scaling under load.",
        ),
        Task(
            (
                "How do I roll out a new version of {svc} without downtime?",
                "How can I do a canary release of {svc} in {env}{ctx}?",
            ),
            "Steps: 1) use a RollingUpdate with maxUnavailable 0 and a readiness probe, or an "
            "Argo Rollouts canary at 10% traffic. 2) watch {metric} before promoting. "
            "Verify: no failed requests during the rollout and `kubectl rollout status` succeeds.",
        ),
        Task(
            (
                "How do I manage secrets for {svc} on Kubernetes{ctx}?",
                "Where should {svc} get its database password in {env}?",
            ),
            "Steps: 1) store the secret in {cloud} secret manager or Vault and sync it with "
            "External Secrets into a Kubernetes Secret. 2) mount it as env vars, never bake it "
            "into the image. Verify: `kubectl get externalsecret` reports SecretSynced.",
        ),
    ),
    inputs=(
        "Cluster: EKS 1.30, three node groups, Argo CD for deploys.",
        "We run everything on GKE with Helm 3.",
        "Error: Back-off restarting failed container.",
        "Terraform 1.8 with state in S3 and DynamoDB locking.",
        "On-call gets paged twice a night.",
    ),
)

API = DomainTemplates(
    slots={
        "res": [
            "orders",
            "users",
            "invoices",
            "products",
            "comments",
            "payments",
            "projects",
            "tickets",
            "bookings",
            "webhooks",
            "files",
            "teams",
        ],
        "fw": ["FastAPI", "Express", "Django REST Framework", "Flask", "Spring Boot", "Go chi"],
        "auth": [
            {"name": "OAuth2 with JWT bearer tokens", "hdr": "Authorization: Bearer <token>"},
            {"name": "API keys", "hdr": "X-API-Key: <key>"},
            {"name": "OAuth2 client credentials", "hdr": "Authorization: Bearer <token>"},
            {"name": "session cookies", "hdr": "Cookie: session=<id>"},
        ],
        "limit": [
            "100 requests per minute",
            "10 requests per second",
            "1000 requests per hour",
            "5 writes per second",
        ],
        "field": ["status", "created_at", "owner_id", "email", "total", "title"],
    },
    tasks=(
        Task(
            (
                "How should I paginate GET /{res} in a REST API{ctx}?",
                "Design pagination for listing {res} with {fw}.",
                "Offset pagination on /{res} gets slow on large tables. What should I use?",
            ),
            "Contract: cursor pagination with `limit` and an opaque `cursor`, returning "
            "`next_cursor`. Example: `GET /{res}?limit=50&cursor=eyJpZCI6MTIzfQ`. Pitfall: "
            "offset pagination skips or repeats {res} when rows change between pages.",
        ),
        Task(
            (
                "How do I add {auth[name]} to a {fw} API{ctx}?",
                "Protect the /{res} endpoints with {auth[name]}.",
                "What is the right way to authenticate clients of the {res} API?",
            ),
            "Contract: require {auth[name]} on /{res}; return 401 when missing or invalid and "
            "403 when the caller lacks scope. Example: `{auth[hdr]}`. Pitfall: never accept "
            "credentials in query strings, they leak into logs.",
        ),
        Task(
            (
                "How do I rate limit the {res} endpoint to {limit}?",
                "Add rate limiting of {limit} per client to a {fw} API.",
                "Clients hammer POST /{res}{ctx}. How do I rate limit them?",
            ),
            "Contract: {limit} per API key with a token bucket in Redis; over the limit return "
            "429 with Retry-After. Example: `HTTP/1.1 429` plus `RateLimit-Remaining: 0`. "
            "Pitfall: per-instance counters let clients exceed the limit behind a load balancer.",
        ),
        Task(
            (
                "How should I version the {res} REST API{ctx}?",
                "We need a breaking change to the {field} field of {res}. How do I version it?",
                "URL or header versioning for a public {res} API?",
            ),
            "Contract: version in the path (`/v1/{res}`, `/v2/{res}`) and keep v1 until clients "
            "migrate. Example: `GET /v2/{res}` returns the new {field} shape. Pitfall: changing "
            "{field} in place breaks every existing client.",
        ),
        Task(
            (
                "Write a {fw} endpoint that creates {res} with validation.",
                "How do I validate the request body of POST /{res} in {fw}?",
                "Show a FastAPI route for creating {res}{ctx}.",
            ),
            "Contract: POST /{res} takes a typed model, returns 201 with the created resource "
            "and a Location header, 422 on invalid input. Example: `@app.post('/{res}', "
            "status_code=201) def create(body: Create{res_t}) -> {res_t}`. Pitfall: echoing DB "
            "errors leaks internals.",
        ),
        Task(
            (
                "How do I document the {res} API with OpenAPI?",
                "Generate an OpenAPI spec for the {fw} {res} service.",
                "Keep the OpenAPI docs of /{res} in sync with the code{ctx}.",
            ),
            "Contract: generate OpenAPI 3.1 from the {fw} route types and publish it at "
            "/openapi.json. Example: `paths./{res}.get.responses.200` references a {res_t} "
            "schema. Pitfall: a hand-written spec drifts; lint it in CI with spectral.",
        ),
        Task(
            (
                "Should I expose {res} through GraphQL or REST?",
                "How do I avoid N+1 queries in a GraphQL resolver for {res}?",
                "Design a GraphQL schema for {res} with {field} filtering.",
            ),
            "Contract: a `{res}(first, after, filter: {{{field}}})` connection field returning "
            "edges and pageInfo. Example: `query {{ {res}(first: 20) {{ edges {{ node {{ id }} "
            "}} }} }}`. Pitfall: batch nested loads with a DataLoader or each row triggers "
            "a query.",
        ),
        Task(
            (
                "How do I make POST /{res} idempotent in a {fw} API{ctx}?",
                "API clients retry POST /{res} and create duplicate {res}. How do I stop that?",
            ),
            "Contract: accept an `Idempotency-Key` header and store the first response per key "
            "for 24h. Example: `Idempotency-Key: 7f3c...` replays the same 201 body. Pitfall: "
            "without a key, network retries duplicate {res}.",
        ),
        Task(
            (
                "What error format should the {res} API return?",
                "How do I return consistent errors from a {fw} API{ctx}?",
            ),
            "Contract: RFC 9457 problem details with type, title, status and detail on every "
            '4xx/5xx. Example: `{{"status": 404, "title": "{res} not found"}}`. Pitfall: '
            "returning 200 with an error body breaks clients and caches.",
        ),
        Task(
            (
                "How do I let clients filter and sort {res} by {field}?",
                "Design query parameters for searching {res}{ctx}.",
            ),
            "Contract: `GET /{res}?{field}=value&sort=-created_at`, allow-listing filterable "
            "fields. Example: `GET /{res}?{field}=open&sort=-created_at&limit=20`. Pitfall: "
            "passing raw sort fields into SQL invites injection and unindexed scans.",
        ),
    ),
    inputs=(
        "Stack: Python 3.12, FastAPI, Postgres.",
        "The API is public and has about 300 client integrations.",
        "Mobile apps call the API over flaky networks.",
        "Traffic peaks at 2k requests per second.",
        "Clients are written in TypeScript and Go.",
    ),
)

FRONTEND = DomainTemplates(
    slots={
        "fw": ["React", "Vue 3", "Next.js", "Nuxt", "Svelte", "Angular"],
        "comp": [
            "modal dialog",
            "dropdown menu",
            "data table",
            "search box",
            "image carousel",
            "sidebar",
            "checkout form",
            "date picker",
            "tabs component",
            "toast",
            "navigation bar",
            "product card",
        ],
        "bundler": ["Vite", "webpack", "esbuild", "Rollup", "Turbopack"],
        "state": ["Redux Toolkit", "Zustand", "Pinia", "React Context", "TanStack Query"],
        "css": ["Tailwind", "CSS modules", "styled-components", "plain CSS", "Sass"],
    },
    tasks=(
        Task(
            (
                "How do I make the {fw} {comp} accessible{ctx}?",
                "Our {comp} fails accessibility checks. What should I fix?",
                "What ARIA attributes does a {comp} in {fw} need?",
            ),
            "Fix: use semantic elements, label the {comp} and manage focus for keyboard users. "
            'Snippet: `<button aria-expanded={{open}} aria-controls="panel">`. Note: test with '
            "axe and a screen reader; Tab and Escape must work.",
        ),
        Task(
            (
                "I get a hydration mismatch in {fw} when rendering the {comp}. Why?",
                "How do I fix hydration errors in the {fw} {comp}{ctx}?",
                "Server and client HTML differ for the {comp} in {fw}. How do I debug it?",
            ),
            "Fix: render the same markup on server and client; move Date.now(), Math.random() "
            "and window reads into an effect. Snippet: `useEffect(() => setReady(true), [])`. "
            "Note: the {comp} then hydrates without re-rendering the page.",
        ),
        Task(
            (
                "Should the {comp} state live in {state} or local state?",
                "How do I manage {comp} state with {state} in {fw}?",
                "The {comp} re-renders on every keystroke{ctx}. How do I structure its state?",
            ),
            "Fix: keep UI-only state local to the {comp}; put shared state in {state} with "
            "narrow selectors. Snippet: `const open = useStore(s => s.open)`. Note: selecting "
            "the whole store re-renders every subscriber.",
        ),
        Task(
            (
                "How do I reduce the bundle size of a {fw} app built with {bundler}?",
                "The {bundler} bundle is 3 MB{ctx}. How do I split it?",
                "Lazy-load the {comp} to speed up first paint.",
            ),
            "Fix: code-split heavy routes and the {comp} with dynamic import and check "
            "{bundler}'s bundle report. Snippet: `const Comp = lazy(() => import('./Comp'))`. "
            "Note: also drop unused locales and import lodash per function.",
        ),
        Task(
            (
                "How do I center the {comp} with {css}?",
                "The {comp} layout breaks on mobile. How do I make it responsive with {css}?",
                "Style the {comp} with {css}{ctx}.",
            ),
            "Fix: lay out the {comp} with flexbox or grid and a mobile-first breakpoint in "
            "{css}. Snippet: `display: grid; place-items: center; gap: 1rem;`. Note: prefer "
            "rem units and clamp() over fixed pixel widths.",
        ),
        Task(
            (
                "My {fw} {comp} fetches data twice. How do I fix it?",
                "How do I load data for the {fw} {comp} with {state}{ctx}?",
                "Fetching in useEffect for the {comp} causes race conditions. What should I use?",
            ),
            "Fix: fetch through a cache such as TanStack Query keyed by the {comp}'s params, "
            "and abort stale requests. Snippet: `useQuery({{ queryKey: ['items', id], queryFn "
            "}})`. Note: dev StrictMode runs effects twice on purpose.",
        ),
        Task(
            (
                "Write a reusable {comp} component in {fw}.",
                "How do I make the {comp} reusable across pages{ctx}?",
            ),
            "Fix: give the {comp} typed props for content and callbacks and slots or children "
            "for custom parts. Snippet: `function Comp({{ items, onSelect }}: Props)`. Note: "
            "keep data fetching outside so the {comp} stays presentational.",
        ),
        Task(
            (
                "How do I test the {comp} in {fw}?",
                "Write a unit test for the {comp} with Testing Library.",
            ),
            "Fix: render the {comp} with Testing Library and query by role, as users do. "
            "Snippet: `await user.click(screen.getByRole('button', {{ name: /open/i }}))`. "
            "Note: avoid asserting on class names or internal state.",
        ),
        Task(
            (
                "The {comp} janks when scrolling. How do I improve rendering performance?",
                "How do I improve the Lighthouse score of the page with the {comp}{ctx}?",
            ),
            "Fix: virtualise long lists, memoise expensive children and animate only transform "
            "and opacity. Snippet: `const Row = memo(RowImpl)`. Note: profile with React "
            "DevTools and watch CLS and INP in Lighthouse.",
        ),
    ),
    inputs=(
        "Stack: TypeScript, Vite and Vitest.",
        "The page is server-rendered.",
        "Users on low-end Android phones complain.",
        "We must meet WCAG 2.2 AA.",
        "Design system built with Storybook.",
    ),
)

ML = DomainTemplates(
    slots={
        "model": [
            "ResNet-50",
            "a BERT classifier",
            "a small GPT",
            "a ViT",
            "an LSTM",
            "a Llama 7B",
            "a T5 model",
            "an MLP",
            "a U-Net",
            "a DistilBERT",
        ],
        "data": [
            "10k labelled images",
            "customer reviews",
            "support tickets",
            "medical scans",
            "product titles",
            "speech clips",
            "tabular churn data",
            "code snippets",
        ],
        "gpu": ["one A100", "a 24 GB RTX 4090", "a 16 GB T4", "two V100s", "8 H100s"],
        "metric": ["F1", "accuracy", "AUROC", "perplexity", "BLEU", "recall@10"],
        "ptm": [
            "a BERT classifier",
            "a small GPT",
            "a Llama 7B",
            "a T5 model",
            "a DistilBERT",
            "a ViT",
            "a Mistral 7B",
            "a RoBERTa model",
        ],
        "opt": ["AdamW", "SGD with momentum", "Adam", "Adafactor"],
    },
    tasks=(
        Task(
            (
                "My {model} overfits on {data}. What should I do?",
                "Validation loss rises while training loss falls for {model}{ctx}. Why?",
                "How do I reduce overfitting when training {model} on {data}?",
            ),
            "Diagnosis: {model} memorises {data}; the train/validation gap is the signal. "
            "Try: augmentation, weight decay 0.01-0.1, dropout and early stopping on "
            "validation loss. Measure: {metric} on a held-out split every epoch.",
        ),
        Task(
            (
                "Write a PyTorch training loop for {model}.",
                "What does a correct PyTorch training step look like for {model} with {opt}?",
                "My PyTorch loop for {model} does not learn{ctx}. What is the usual structure?",
            ),
            "Diagnosis: most silent bugs are a missing zero_grad or model.train(). Try: "
            "`model.train(); opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); "
            "opt.step()` with {opt}. Measure: loss falls on one overfit batch first.",
        ),
        Task(
            (
                "How do I fine-tune {ptm} on {data} with LoRA?",
                "Fine-tune {ptm} on {gpu}{ctx}.",
                "Full fine-tuning {ptm} runs out of memory on {gpu}. What are the options?",
            ),
            "Diagnosis: full fine-tuning of {ptm} stores optimizer state for every weight. "
            "Try: PEFT LoRA (r=8-16) on attention projections, bf16 and gradient "
            "checkpointing on {gpu}. Measure: {metric} on held-out {data} vs the base model.",
        ),
        Task(
            (
                "I get CUDA out of memory training {model} on {gpu}. How do I fix it?",
                "How do I fit {model} training on {gpu}{ctx}?",
                "Training {model} on {gpu} OOMs at batch size 64.",
            ),
            "Diagnosis: activations of {model} at this batch size exceed {gpu} memory. Try: "
            "smaller micro-batches with gradient accumulation, torch.autocast bf16 and "
            "gradient checkpointing. Measure: torch.cuda.max_memory_allocated() per step.",
        ),
        Task(
            (
                "How do I build embeddings for semantic search over {data}?",
                "Which embedding model should I use for {data}{ctx}?",
                "Create a vector index of {data} embeddings.",
            ),
            "Diagnosis: lexical search misses paraphrases in {data}. Try: encode with a "
            "sentence-transformers model, L2-normalise and index in FAISS with inner "
            "product. Measure: recall@10 on a labelled query set.",
        ),
        Task(
            (
                "How should I evaluate {model} trained on {data}?",
                "Which metric fits {model} on imbalanced {data}?",
                "My {model} scores high {metric} but fails in production{ctx}. Why?",
            ),
            "Diagnosis: one aggregate {metric} hides class imbalance and leakage in {data}. "
            "Try: a time- or group-based split, per-class metrics and a calibration plot. "
            "Measure: {metric} with bootstrap confidence intervals.",
        ),
        Task(
            (
                "Training loss of {model} becomes NaN after a few steps. What is wrong?",
                "{model} training diverges with {opt}{ctx}. How do I stabilise it?",
            ),
            "Diagnosis: the learning rate is too high for {model} or fp16 overflows. Try: "
            "lower the LR 3-10x, add warmup, clip_grad_norm_(params, 1.0) and prefer bf16. "
            "Measure: gradient norm and loss each step.",
        ),
        Task(
            (
                "GPU utilisation is only 30% when training {model} on {gpu}. Why?",
                "How do I speed up the PyTorch DataLoader when training {model} on {data}{ctx}?",
            ),
            "Diagnosis: {gpu} waits on the input pipeline, not compute. Try: DataLoader "
            "num_workers 4-8, pin_memory=True, pre-tokenised or pre-resized {data} and "
            "torch.compile. Measure: step time and nvidia-smi utilisation.",
        ),
        Task(
            (
                "How do I choose the learning rate for {model} with {opt}?",
                "Tune hyperparameters of {model} on {data}{ctx}.",
            ),
            "Diagnosis: the learning rate matters most for {model} with {opt}. Try: an LR "
            "range test, then cosine decay with warmup and a small Optuna search over LR and "
            "weight decay. Measure: validation {metric}, not training loss.",
        ),
    ),
    inputs=(
        "Framework: PyTorch 2.4 with Hugging Face Transformers.",
        "Dataset split 80/10/10, classes heavily imbalanced.",
        "Batch size 32, learning rate 3e-4, 10 epochs.",
        "We track experiments in MLflow.",
        "Inference must run under 50 ms per request.",
    ),
)

DOMAIN_TEMPLATES: dict[str, DomainTemplates] = {
    "dataeng": DATAENG,
    "devops": DEVOPS,
    "api": API,
    "frontend": FRONTEND,
    "ml": ML,
}
