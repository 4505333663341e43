"""The report: bands (pure numpy), summaries, plotly figures and one offline HTML page.

``bands``, ``summary`` and ``pools`` (which runs share a band, their labels, duplicates)
need only numpy; ``figures``, ``html`` and ``build`` import
plotly, so training (``landscape run``) never needs it.
"""
