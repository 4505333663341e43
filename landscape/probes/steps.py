"""Where an optimizer step's gradient is ready: plain steps and closure steps.

A probe that reads the step's gradient (or measures the step's batch) at theta_t runs in an
optimizer step pre-hook. For ``optimizer.step()`` the gradient is in ``.grad`` when the
pre-hook runs. For ``optimizer.step(closure)`` (Lightning's automatic optimization, LBFGS) it
is not there yet: the closure runs the forward and backward pass inside ``step``. The
pre-hook then hands ``step`` a closure that runs the probe right after the closure's first
call -- still at theta_t, on the closure's own batch, before the update. Later calls (LBFGS
evaluates the closure several times per step, at other points) are the closure's alone.
"""

from __future__ import annotations

from typing import Any, Callable


def step_closure(args: tuple, kwargs: dict) -> Callable[[], Any] | None:
    """The closure given to ``optimizer.step``, from a step pre-hook's ``args`` (the optimizer
    first) and ``kwargs``; None for a plain step."""
    if "closure" in kwargs:
        return kwargs["closure"]
    return args[1] if len(args) > 1 else None


def _with_closure(args: tuple, kwargs: dict, closure: Callable[[], Any]) -> tuple[tuple, dict]:
    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs


def after_gradient(args: tuple, kwargs: dict, action: Callable[[], None],
                   settle: Callable[[], None] | None = None) -> tuple[tuple, dict] | None:
    """Run ``action`` when the step's gradient is in ``.grad``, at theta_t; then ``settle``
    however ``action`` (or the closure's first call) ended. Returns what a step pre-hook
    returns: None (a plain step: both ran now), or the arguments with the closure wrapped."""
    closure = step_closure(args, kwargs)
    if closure is None:
        try:
            action()
        finally:
            if settle is not None:
                settle()
        return None
    first_call = [True]

    def closure_then_action(*closure_args, **closure_kwargs):
        if not first_call[0]:
            return closure(*closure_args, **closure_kwargs)
        first_call[0] = False
        try:
            loss = closure(*closure_args, **closure_kwargs)
            action()
        finally:
            if settle is not None:
                settle()
        return loss

    return _with_closure(args, kwargs, closure_then_action)
