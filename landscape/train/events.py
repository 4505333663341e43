"""The training loop's events: ``LoopListener``, one no-op method per event (as Lightning's
``Callback``). The loop (``loop.TrainingLoop``) owns the loop; the file's writer, checkpointing,
progress and a Ray worker's relay subscribe to what it announces."""


class LoopListener:
    """One subscriber to the training loop's events; each event a no-op here. The loop calls
    them in the order its listeners were given; ``loop`` is the ``loop.TrainingLoop`` (named,
    not imported: the loop imports this module)."""

    def on_rows_due(self, loop) -> None:
        """The runs' logs hold rows the file must get now: at the start (every group exists
        from then on), after an epoch, before a checkpoint, before a stop, at the end."""

    def on_step(self, loop) -> None:
        """Every live run took a step (``loop.step``: steps taken)."""

    def on_epoch_end(self, loop, last: bool) -> None:
        """An epoch ended and its rows are in the file (``last``: the run's final epoch)."""

    def on_checkpoint_saved(self, loop, path) -> None:
        """A checkpoint of the runs was saved at ``path``, after the rows it refers to."""

    def on_runs_end(self, loop, error: BaseException | None) -> None:
        """The runs ended and the file says how (``error``: None when they trained to the end
        or diverged; else what stopped them, raised after this)."""
