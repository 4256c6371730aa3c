"""The plug-in's own test: every check of metarl_bench's conformance kit, one test each.

    pytest examples/metarl_bench_plugin_example/tests -v
"""

import pytest

from metarl_bench.testing import estimator_checks


@pytest.mark.parametrize("check", estimator_checks("unbiased-anchored"), ids=str)
def test_conformance(check):
    check()
