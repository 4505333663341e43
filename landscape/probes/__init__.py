"""Probes: measurements of the optimization landscape that take a model and a batch.

Each measurement is a function returning a typed record and leaving no trace (``context``):
``along_gradient`` (``landscape``: loss, gradient predictiveness, effective beta along the
gradient), ``internal_covariate_shift`` (``ics``), ``activation_stats`` (``activations``),
``sharpness`` (``curvature``: Hessian eigenvalues, trace, curvature along the gradient),
``spectrum`` (``spectrum``: the Hessian's eigenvalue density by SLQ, its outliers),
``layer_curvature`` (each weight layer's diagonal Hessian block), ``layer_ranks`` (``ranks``:
per-layer gradient norms, representation ranks); ``spectrum_hooks`` attaches these three.
``hooks`` attaches them to any training loop from outside (``StepInstrument``, the base its
probes share as siblings: ``LandscapeProbe``, ``ICSProbe``, ``ActivationProbe``,
``SharpnessProbe``; ``StepLoss``, each step's loss and accuracy); ``gradients`` and
``weights`` record per-step statistics; ``steps`` says
where a step's gradient is ready (``optimizer.step()`` or ``optimizer.step(closure)``).
Probes know nothing of files, plots or the CLI.
"""

from .activations import DEFAULT_BIN_EDGES, ActivationRecord, activation_stats
from .context import (Batch, Batches, LossFn, ModelInputs, buffer_clones, loss_and_grad, no_trace,
                      in_dtype, probe_forward, probe_passes, probing, trainable_parameters)
from .curvature import HessianOperator, SharpnessRecord, sharpness
from .spectrum import (HESSIAN_BN_MODES, SpectrumRecord, SpectrumSettings, hessian_batches,
                       lanczos, slq, spectrum)
from .layer_curvature import LayerCurvatureRecord, layer_curvature
from .ranks import RankRecord, layer_ranks, representation_ranks
from .spectrum_hooks import LayerCurvatureProbe, RankProbe, SpectrumProbe
from .weights import WEIGHT_STAT_FIELDS, WeightStats, update_angle
from .gradients import GRADIENT_STAT_FIELDS, GradientStats, gradient_step_stats
from .hooks import (ActivationProbe, ICSProbe, LandscapeProbe, RecordingLoss, SharpnessProbe,
                    StepInstrument, StepLoss, StepLossRecord)
from .ics import ICSRecord, internal_covariate_shift, optimizer_update
from .landscape import (POINT_MODES, PROBE_DTYPES, STEP_ROUNDING_LIMIT, LandscapeRecord,
                        StepResolutionWarning, along_gradient, evaluate_points, parameter_layers,
                        probe_tensors, record_from, step_rounding)

__all__ = ["along_gradient", "LandscapeRecord", "evaluate_points", "probe_tensors", "record_from",
           "parameter_layers", "POINT_MODES", "PROBE_DTYPES", "LandscapeProbe", "GradientStats",
           "gradient_step_stats", "StepInstrument", "ICSProbe", "ActivationProbe",
           "SharpnessProbe", "internal_covariate_shift", "optimizer_update", "ICSRecord",
           "activation_stats", "ActivationRecord", "DEFAULT_BIN_EDGES", "LossFn", "no_trace",
           "loss_and_grad", "trainable_parameters", "buffer_clones", "ModelInputs", "Batch",
           "Batches", "probe_forward", "step_rounding", "STEP_ROUNDING_LIMIT",
           "StepResolutionWarning", "in_dtype", "probing", "sharpness", "SharpnessRecord",
           "HessianOperator", "WeightStats", "WEIGHT_STAT_FIELDS", "update_angle",
           "GRADIENT_STAT_FIELDS", "RecordingLoss", "probe_passes", "StepLoss",
           "StepLossRecord", "spectrum", "SpectrumRecord", "SpectrumSettings", "slq", "lanczos",
           "hessian_batches", "HESSIAN_BN_MODES", "layer_curvature", "LayerCurvatureRecord",
           "layer_ranks", "RankRecord", "representation_ranks", "SpectrumProbe",
           "LayerCurvatureProbe", "RankProbe"]
