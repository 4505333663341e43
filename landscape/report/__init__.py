"""The report: bands (pure numpy), summaries, plotly figures and one offline HTML page.

``bands`` and ``summary`` need only numpy; ``figures``, ``html`` and ``build`` import
plotly, so training (``landscape run``) never needs it.
"""
