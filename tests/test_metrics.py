"""The accuracy interval reported next to every evaluation."""
import pytest

from edge.stats import wilson_interval
from edge.vision.scoring import classification_report


def test_wilson_interval_matches_published_values():
    # Textbook Wilson 95 % intervals: 5/10 -> [0.237, 0.763], 0/10 -> [0, 0.278].
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_interval_narrows_with_more_images_and_is_in_the_report():
    small, large = wilson_interval(9, 10), wilson_interval(900, 1000)
    assert small[0] < large[0] < 0.9 < large[1] < small[1]
    report = classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    low, high = report["accuracy_ci95"]
    assert low < report["accuracy"] == 0.75 < high
