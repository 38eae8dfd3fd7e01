"""Cost ledger: prices from prices.yaml, per request / workflow, savings vs the external model."""

from __future__ import annotations

import pytest

from qlp_ray.core.errors import ConfigError, InvalidRequest
from qlp_ray.serve.telemetry.cost import CostLedger, PriceTable


def test_shipped_price_table_loads_and_names_resolve():
    prices = PriceTable.load()
    assert prices.models[prices.reference_model].kind == "external"
    assert prices.models[prices.local_model].kind == "local"
    # an adapter id that is not priced falls back to the local entry
    assert prices.price_for("dataeng-v3")[0] == prices.local_model


def _table() -> PriceTable:
    return PriceTable.model_validate(
        {
            "reference_model": "ext",
            "local_model": "loc",
            "models": {
                "ext": {"kind": "external", "input_per_mtok": 2.0, "output_per_mtok": 8.0},
                "loc": {"kind": "local", "input_per_mtok": 0.1, "output_per_mtok": 0.2},
                "gpu": {"kind": "local", "input_per_mtok": 0.05, "output_per_mtok": 0.1},
            },
            "adapters": {"ml-v2": "gpu"},
        }
    )


def test_request_and_workflow_costs_by_hand():
    ledger = CostLedger(_table())
    # 1000 prompt + 500 completion tokens on a local adapter:
    # local = (1000*0.1 + 500*0.2)/1e6 = 2e-4; external = (1000*2 + 500*8)/1e6 = 6e-3
    rc = ledger.record("dataeng-v1", 1000, 500, workflow_id="wf1")
    assert rc.cost_usd == pytest.approx(2e-4)
    assert rc.reference_cost_usd == pytest.approx(6e-3)
    assert rc.savings_usd == pytest.approx(5.8e-3)
    # adapter override to the gpu entry: (2000*0.05 + 100*0.1)/1e6 = 1.1e-4
    rc2 = ledger.record("ml-v2", 2000, 100, workflow_id="wf1")
    assert rc2.price_entry == "gpu" and rc2.cost_usd == pytest.approx(1.1e-4)
    # a fallback to the external model itself saves nothing
    rc3 = ledger.record("ext", 100, 100)
    assert rc3.savings_usd == pytest.approx(0.0)
    wf = ledger.workflow("wf1")
    assert wf["requests"] == 2
    assert wf["cost_usd"] == pytest.approx(3.1e-4)
    assert wf["reference_cost_usd"] == pytest.approx(6e-3 + (2000 * 2 + 100 * 8) / 1e6)
    report = ledger.report()
    assert report["total"]["requests"] == 3
    total_ref = 6e-3 + 4.8e-3 + 1e-3
    assert report["total"]["savings_usd"] == pytest.approx(total_ref - 3.1e-4 - 1e-3)
    assert report["total"]["savings_ratio"] == pytest.approx((total_ref - 1.31e-3) / total_ref)
    assert set(report["by_model"]) == {"dataeng-v1", "ml-v2", "ext"}


def test_bad_prices_and_inputs_are_rejected(tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text(
        "reference_model: nope\nlocal_model: loc\nmodels:\n  loc: "
        "{kind: local, input_per_mtok: 1, output_per_mtok: 1}\n"
    )
    with pytest.raises(ConfigError, match="unknown price entry 'nope'"):
        PriceTable.load(bad)
    ledger = CostLedger(_table(), max_workflows=2)
    with pytest.raises(InvalidRequest):
        ledger.record("x", -1, 0)
    for wf in ("a", "b", "c"):
        ledger.record("x", 1, 1, workflow_id=wf)
    with pytest.raises(InvalidRequest):  # oldest workflow evicted, memory stays bounded
        ledger.workflow("a")
    assert ledger.workflow("c")["requests"] == 1
