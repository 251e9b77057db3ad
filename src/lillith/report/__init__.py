"""``lillith report``: a replay's scores as figures and a self-contained HTML page.

:func:`~lillith.report.render.write_report` reads a replay output CSV
(:mod:`lillith.report.data`), draws the figures with matplotlib (the
``report`` extra; :mod:`lillith.report.figures`) and writes ``index.html``
with the PNGs embedded, beside the PNG files.
"""
