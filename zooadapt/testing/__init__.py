"""Conformance checks for plugin authors: does a family fit its models, does a plugin work?

Call them from your plugin's own tests; every check runs, every problem is collected, and
one :class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a failed
assertion) lists them all, each naming the group, parameter, path, rule or key at fault::

    import zooadapt as za
    from zooadapt.testing import check_family, check_plugin

    import zooadapt_mynet


    def test_mynet_family():
        pm = za.make_plugin_manager(zooadapt_mynet)
        check_family("mynet", zooadapt_mynet.MyNet, plugin_manager=pm)


    def test_mynet_plugin():
        check_plugin(zooadapt_mynet, {"mynet": zooadapt_mynet.MyNet})

:func:`family_report` and :func:`plugin_report` run the same checks and return the
:class:`ConformanceReport` without raising.
"""

from zooadapt.testing._family import check_family, family_report
from zooadapt.testing._plugin import check_plugin, plugin_report
from zooadapt.testing._report import (
    CheckpointKeys,
    ConformanceError,
    ConformanceReport,
    ModelSource,
    Problem,
    Sample,
)

__all__ = [
    "CheckpointKeys",
    "ConformanceError",
    "ConformanceReport",
    "ModelSource",
    "Problem",
    "Sample",
    "check_family",
    "check_plugin",
    "family_report",
    "plugin_report",
]
