"""Wizard step 2: the run's configuration — what to train, the training method (the API's
method table: SFT, AdaLoRA, QLoRA where the cluster has a GPU, DPO, PPO, GRPO, RLOO,
reward model, distillation) with the reward / teacher / parent it takes and its own
hyperparameters from the API's method table (PPO: KL coefficient and target, clip range,
epochs per rollout — defaults and bounds as the gateway states them), LoRA rank, alpha
and dropout, length (epochs or steps), batch size, learning rate — and for SFT methods the
API's estimate of tokens, time (at the measured tokens/s) and cost (at the configured
price)."""

from __future__ import annotations

import streamlit as st

from qlp_ray.ui.logic import hyperparameters, main_domain, missing_options, option_widget
from qlp_ray.ui.session import call, client, wizard_state
from qlp_ray.ui.wizard import method_spec, methods, recheck, uploaded

state = wizard_state()
st.title("Step 2 of 4 · Configure")
report = state["report"]
if not state["rows"] or not report or not report["enough"]:
    st.warning("Build a dataset with enough valid rows first (step 1).")
    st.stop()

health = call(client().health)
table = methods() if health is not None else None
if health is None or table is None:
    st.stop()
config = dict(state["config"])
st.text_input("Base model (set by the deployment: model.base_model)", health["base_model"],
              disabled=True)  # fmt: skip
domain = main_domain(report) or ""
config["model"] = st.text_input(
    "Adapter to train (a domain, or a registered adapter id for a new version)",
    value=config.get("model") or domain,
)
offered = [m for m, spec in table.items() if spec["available"]]
current = method_spec()["name"]
config["method"] = st.selectbox(
    "Method", offered, index=offered.index(current) if current in offered else 0,
    format_func=lambda m: f"{m} — {table[m]['summary']} · data: {table[m]['data_shape']}",
    key="configure_method",
)  # fmt: skip
hidden = [m for m, spec in table.items() if not spec["available"]]
if hidden:
    st.caption(f"Not offered on this cluster: {', '.join(hidden)} (qlora needs a CUDA GPU).")
spec = table[config["method"]]
if config["method"] != state["config"].get("method"):
    state["config"] = {**state["config"], "method": config["method"]}
    report = recheck()  # the rows, checked in the new method's shape
if report and report.get("data_shape") not in (None, spec["data_shape"]):
    report = recheck()
if report and not report["enough"]:
    st.error(f"{config['method']} trains on {spec['data']}: {report['valid']} of "
             f"{report['total']} rows have that shape. Go back to step 1 and add "
             f"{spec['data_shape']} rows.")  # fmt: skip
if spec["needs_reward"]:
    config["reward"] = st.text_input(
        "Reward (keyword:a,b · domain · json · regex:<pattern> · reward-model:<id>)",
        value=config.get("reward") or "", key="reward_input",
    )  # fmt: skip
if spec["needs_teacher"]:
    config["teacher"] = st.text_input(
        "Teacher (adapter id[@version] or 'base')", value=config.get("teacher") or "",
        key="teacher_input",
    )  # fmt: skip
if spec["accepts_parent"]:
    config["parent"] = st.text_input(
        "Start from (registered adapter id[@version], optional)",
        value=config.get("parent") or "", key="parent_input",
    )  # fmt: skip
for problem in missing_options(config, spec):
    st.warning(problem)
cols = st.columns(3)
config["lora_rank"] = cols[0].number_input("LoRA rank", 1, 256, config.get("lora_rank", 8))
config["lora_alpha"] = cols[1].number_input("LoRA alpha", 1, 1024, config.get("lora_alpha", 16))
config["lora_dropout"] = cols[2].number_input(
    "LoRA dropout", 0.0, 0.9, config.get("lora_dropout", 0.05), step=0.01
)
cols = st.columns(4)
lengths = ["epochs", "steps"] if spec["sft_family"] else ["steps"]
length = config.get("length", "epochs")
config["length"] = cols[0].radio(
    "Length in", lengths, index=lengths.index(length) if length in lengths else 0
)
if config["length"] == "epochs":
    config["n_epochs"] = cols[1].number_input("Epochs", 0.1, 100.0, config.get("n_epochs", 1.0))
else:
    config["n_steps"] = cols[1].number_input("Steps", 1, 100_000, config.get("n_steps", 60))
config["batch_size"] = cols[2].number_input("Batch size", 1, 512, config.get("batch_size", 8))
config["learning_rate"] = cols[3].number_input(
    "Learning rate", 1e-6, 1.0, config.get("learning_rate", 2e-3), format="%.5f"
)
options = spec.get("hyperparameters") or []  # the method's own, e.g. PPO's KL and clip
if options:
    st.caption(
        f"{config['method']} options (train.{config['method']}; filled with the gateway's defaults)"
    )
    for col, option in zip(st.columns(len(options)), options, strict=True):
        name = option["name"]
        config[name] = col.number_input(
            name, key=f"hp_{name}", **option_widget(option, config.get(name))
        )
state["config"] = config

if not spec["sft_family"]:
    st.caption(f"The cost estimate covers SFT methods; {config['method']} runs "
               f"{config.get('n_steps', 60)} steps on {spec['data']}.")  # fmt: skip
    st.stop()
if st.button("Estimate cost and time", key="estimate_button"):
    upload = uploaded()
    if upload is not None:
        state["estimate"] = call(
            client().estimate_fine_tuning, upload["path"], **hyperparameters(config)
        )

est = state["estimate"]
if est:
    cols = st.columns(4)
    cols[0].metric("Steps", est["steps"])
    cols[1].metric("Tokens", f"{est['tokens']:,}")
    if est["seconds"] is None:
        cols[2].metric("Time", "n/a")
        st.info("No earlier run on this base model recorded a throughput: train once and the "
                "estimate uses its measured tokens/s.")  # fmt: skip
    else:
        cols[2].metric("Time", f"{est['seconds']:.0f} s")
        src = est["throughput_from"]
        st.caption(f"At {est['tokens_per_s']:.0f} tokens/s, measured by {src['adapter']} "
                   f"v{src['version']} ({src['created_at']}).")  # fmt: skip
    cols[3].metric("Cost", f"{est['cost']:.6f} {est['currency']}")
    st.caption(f"Priced at the '{est['price_entry']}' entry of prices.yaml: "
               f"{est['price_per_mtok']} {est['currency']} per million tokens; "
               f"{est['epochs']} passes over {est['records']} training records.")  # fmt: skip
