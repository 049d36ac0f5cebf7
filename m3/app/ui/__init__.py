"""The lineage web page (``m3 ui``): see :mod:`m3.app.ui.server`."""
