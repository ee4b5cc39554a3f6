"""Machinery shared by zooadapt's public modules; never imports them.

Modules here may import each other and the vocabulary modules ``zooadapt.errors``,
``zooadapt.types`` and ``zooadapt.hookspecs``, nothing else of zooadapt.
"""
