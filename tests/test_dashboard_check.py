"""The offline dashboard check's reading of its screenshot (benchmarks/dashboard/
check_offline.py; the rest needs Chromium and a published asv page, see
benchmarks/tools/check_asv_workflows.sh)."""

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def check_offline():
    path = os.path.join(ROOT, "benchmarks", "dashboard", "check_offline.py")
    spec = importlib.util.spec_from_file_location("check_offline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saturated_pixels_are_counted_in_the_graph_but_not_in_its_legend(check_offline,
                                                                          tmp_path):
    import matplotlib.image

    height, width = 400, 600
    pixels = np.full((height, width, 3), 0.9)                  # light grey page
    ox, oy = check_offline.MAIN_GRAPH_ORIGIN
    pixels[oy + 20:oy + 30, ox + 30:ox + 40] = (0.14, 0.48, 0.68)   # a plotted blue: 100
    pixels[oy + 50:oy + 54, ox + 100:ox + 105] = (0.89, 0.29, 0.2)  # the legend's red: 20
    pixels[oy + 60:oy + 70, ox + 30:ox + 40] = (0.5, 0.5, 0.5)      # a grey axis: not data
    pixels[5:15, 5:15] = (1.0, 0.0, 0.0)                            # page chrome: outside
    png = tmp_path / "shot.png"
    matplotlib.image.imsave(png, pixels)
    assert check_offline.count_plot_pixels(png, None) == 120
    assert check_offline.count_plot_pixels(png, (95, 45, 10, 5)) == 100


def test_a_file_that_is_not_a_png_is_a_check_error(check_offline, tmp_path):
    path = tmp_path / "shot.png"
    path.write_bytes(b"not a png")
    with pytest.raises(check_offline.CheckError, match="not a readable PNG"):
        check_offline.count_plot_pixels(path, None)
