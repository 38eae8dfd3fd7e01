"""`qlp router train`'s report: the confusion matrix, recall per domain, the PNG."""

from __future__ import annotations

from qlp_ray.route.report import confusion_matrix, write_routing_report


def test_confusion_and_report(tmp_path):
    labels = ["api", "devops", "ml"]
    truth = ["api", "api", "devops", "ml", "ml", "ml"]
    predicted = ["api", "devops", "devops", "ml", "api", "ml"]
    assert confusion_matrix(labels, truth, predicted) == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    out = write_routing_report(tmp_path / "r", labels, truth, predicted, title="t",
                               facts={"threshold": 0.2})  # fmt: skip
    page = out.read_text()
    assert "6 rows, accuracy <b>0.667</b>" in page
    assert "<tr><td>ml</td><td>3</td><td>0.667</td></tr>" in page
    assert "<td>threshold</td><td>0.2</td>" in page
    assert (tmp_path / "r" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
