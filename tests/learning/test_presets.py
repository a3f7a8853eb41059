"""MDF presets: per data set settings, batches sized to the data."""

from implicit_geom.learning.presets import MDF_PRESETS, mdf_preset


def test_batch_grows_with_the_data_unless_the_preset_fixes_it():
    # Catches a batch that ignores the data size (an epoch of 4000 points in
    # 16 small steps), one that shrinks below 256 or grows without bound, and
    # an override of a preset's own batch size.
    assert "batch_size" not in mdf_preset("two_circles")  # no size given: class default
    assert mdf_preset("two_circles", 800)["batch_size"] == 256
    assert mdf_preset("two_circles", 3200)["batch_size"] == 576  # ceil(3200 / 6) -> x64
    assert mdf_preset("mine", 10 ** 6)["batch_size"] == 1024
    assert mdf_preset("flood", 3900)["batch_size"] == MDF_PRESETS["flood"]["batch_size"]
    preset = mdf_preset("two_circles", 3200)
    preset["epochs"] = 1
    assert mdf_preset("two_circles")["epochs"] == MDF_PRESETS["two_circles"]["epochs"]
