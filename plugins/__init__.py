"""zooadapt's built-in plugins, registered through the same entry points third parties use."""
