"""Integrations: the recorder (``train.Recorder``) inside other people's training frameworks.

``lightning``: ``LandscapeCallback``, a PyTorch Lightning callback (the ``lightning`` extra;
imported only when that module is).
"""
