"""`make quickstart` on a shortened run: the generated data take real learning, and Femto gets well above chance."""

from mambaout.apps.quickstart import run_quickstart


def test_a_shortened_quickstart_learns_well_above_chance(tmp_path):
    # 186 optimizer steps instead of the full run's 744; chance is 10% (its spread on 200 images: ~2%)
    report = run_quickstart(tmp_path, train_per_class=200, val_per_class=20, test_per_class=1, epochs=3)
    assert report.validation.images == 200 and report.validation.skipped == 0
    assert report.validation.top1 >= 25.0, report.format()
    assert report.checkpoint.is_file() and (report.run_dir / "summary.csv").is_file()
    assert len(report.predictions) == 5
    text = report.format()
    assert "top-1" in text and str(report.checkpoint) in text
