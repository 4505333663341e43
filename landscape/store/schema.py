"""The file's schema in one place: every group, every field's units, meaning and dimensions.

``GROUPS`` describes each group of a run (``/runs/<name>/<group>/``) and ``FIELDS`` every
dataset in it. The writer copies ``units`` and ``description`` into each dataset's HDF5
attributes and turns ``dims`` into HDF5 dimension scales: the dataset named like a
dimension (``step``, ``eta``, ``layer``, ...) is that dimension's scale, attached to the
matching axis of every other dataset of the group. netCDF readers (``xarray.open_dataset(
path, engine="h5netcdf", group="runs/<name>/probe")``) then see named dimensions.

Groups that instruments add (``ics/``, ``activations/``) are created at run time through
``RunLog.declare``; their fields are described here too, and ``declare`` refuses a field
that is not. The README's "HDF5 schema" section documents the same fields.

Units: the parameters θ are plain numbers, so losses, gradients, β and η are dimensionless
("1"); the description says what each number is (the loss is the cross-entropy in nats, or
the deep linear network's summed squared error). A run of another ``--loss`` stores that loss
in the same fields (its ``loss`` and ``label_smoothing`` attributes say which); the fields'
descriptions stay as they were, so that files of the default settings stay bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 3  # 3: a file per run (layout "run-files"); 2: units, descriptions, scales


@dataclass(frozen=True)
class Field:
    """One dataset of a group: its units, what it is, and the name of each axis."""

    units: str
    description: str
    dims: tuple[str, ...]


DIMENSIONLESS = "1"
NO_UNITS = ""  # text labels

_STEP = Field(DIMENSIONLESS, "0-based index of the training step (one optimizer update on one "
                             "minibatch); step 0 is the first update", ("step",))
_EPOCH = Field(DIMENSIONLESS, "0-based index of the epoch; epoch 0 is the first pass over the "
                              "training set", ("epoch",))
_LAYER = Field(NO_UNITS, "module name of each probed weight layer, e.g. features.15", ("layer",))
_LAYER_INDEX = Field(DIMENSIONLESS, "1-based position of the layer among the model's conv and "
                                    "linear layers (layer #1 is the first)", ("layer",))

GROUPS: dict[str, str] = {
    "steps": "one row per training step",
    "epochs": "one row per epoch (a partial last epoch has a row too)",
    "probe": "the landscape probe along the gradient, one row per probed step: the loss and the "
             "gradient at theta - eta g for each step size eta (Santurkar et al. 2018, Fig. 4)",
    "ics": "internal covariate shift (Santurkar et al. 2018, Definition 2.1), one row per probed "
           "step, one column per layer",
    "activations": "pre-activation distributions (after the normalization, before the ReLU), one "
                   "row per probed step, one column per layer",
    "curvature": "the Hessian of the minibatch loss at probed steps: top eigenvalues (Lanczos), "
                 "Hutchinson trace, curvature along the gradient (--sharpness-every)",
    "weights": "per-layer weight statistics at every step: norm, effective learning rate, "
               "effective gradient norm, angular update (--weight-stats; on by default with --sharpness-every)",
}

FIELDS: dict[str, dict[str, Field]] = {
    "steps": {
        "step": _STEP,
        "epoch": Field(DIMENSIONLESS, "0-based index of the epoch this step belongs "
                                      "to; epoch 0 is the first pass over the training set",
                       ("step",)),
        "loss": Field(DIMENSIONLESS, "minibatch loss: the mean loss of this step's training "
                                     "minibatch at the parameters before its update (cross-entropy "
                                     "in nats)", ("step",)),
        "grad_norm": Field(DIMENSIONLESS, "||g_t||_2, the L2 norm of this step's minibatch "
                                          "gradient (all parameters)", ("step",)),
        "grad_diff": Field(DIMENSIONLESS, "||g_t - g_{t-1}||_2 between the gradients of "
                                          "consecutive minibatches; NaN at step 0", ("step",)),
        "beta_consecutive": Field(DIMENSIONLESS, "||g_t - g_{t-1}||_2 / ||theta_t - "
                                                 "theta_{t-1}||_2 (consecutive minibatches; not "
                                                 "the paper's beta); NaN at step 0", ("step",)),
        "learning_rate": Field(DIMENSIONLESS, "LR(t), the learning rate this step's update "
                                              "used (the run's lr under --lr-schedule "
                                              "constant; files from before read as the run's "
                                              "lr)", ("step",)),
    },
    "epochs": {
        "epoch": _EPOCH,
        "steps": Field(DIMENSIONLESS, "number of training steps in this epoch (fewer than the "
                                      "steps per epoch for a partial last epoch)", ("epoch",)),
        "train_loss": Field(DIMENSIONLESS, "mean minibatch loss over the epoch's steps (train "
                                           "mode, while training)", ("epoch",)),
        "train_acc": Field(DIMENSIONLESS, "fraction of the epoch's training samples classified "
                                          "correctly while training, in [0, 1]; NaN for the deep "
                                          "linear network", ("epoch",)),
        "test_loss": Field(DIMENSIONLESS, "mean loss on the test set after the epoch (eval mode)",
                           ("epoch",)),
        "test_acc": Field(DIMENSIONLESS, "fraction of the test set classified correctly after "
                                         "the epoch (eval mode), in [0, 1]; NaN for the deep "
                                         "linear network", ("epoch",)),
        "seconds": Field("s", "wall-clock time of the epoch's training steps and test "
                              "evaluation", ("epoch",)),
        "train_mode_loss": Field(DIMENSIONLESS, "mean loss after the epoch on a fixed subset of "
                                                "the training set (the same images every epoch), "
                                                "model in train mode: BatchNorm on each batch's "
                                                "statistics, no dropout or noise; running "
                                                "statistics untouched; NaN for the deep linear "
                                                "network", ("epoch",)),
        "train_mode_acc": Field(DIMENSIONLESS, "fraction of that subset classified correctly in "
                                               "train mode, in [0, 1]", ("epoch",)),
        "eval_mode_loss": Field(DIMENSIONLESS, "mean loss on the same subset in eval mode "
                                               "(BatchNorm on its running statistics)",
                                ("epoch",)),
        "eval_mode_acc": Field(DIMENSIONLESS, "fraction of that subset classified correctly in "
                                              "eval mode, in [0, 1]", ("epoch",)),
    },
    "probe": {
        "step": Field(DIMENSIONLESS, "0-based training step probed, at its parameters theta "
                                     "before its update, on its minibatch", ("step",)),
        "eta": Field(DIMENSIONLESS, "absolute step size of the probe (the run's learning rate "
                                    "times the --etas multiple), not a multiple of the learning "
                                    "rate", ("eta",)),
        "loss": Field(DIMENSIONLESS, "L(theta - eta g): the minibatch loss after a step of size "
                                     "eta along the gradient g", ("step", "eta")),
        "grad_diff": Field(DIMENSIONLESS, "||grad L(theta - eta g) - g||_2: gradient "
                                          "predictiveness", ("step", "eta")),
        "beta": Field(DIMENSIONLESS, "effective beta-smoothness: max over eta of "
                                     "||grad L(theta - eta g) - g||_2 / (eta ||g||_2)", ("step",)),
        "grad_norm": Field(DIMENSIONLESS, "||g||_2, the minibatch gradient's L2 norm at theta",
                           ("step",)),
        "loss_at_theta": Field(DIMENSIONLESS, "L(theta): the minibatch loss before the step",
                               ("step",)),
        "learning_rate": Field(DIMENSIONLESS, "LR(t), the learning rate at the probed step: "
                                              "its step sizes are eta x learning_rate / (the "
                                              "run's lr), i.e. LR(t) x --etas (eta itself "
                                              "under a constant schedule; files from before "
                                              "read as the run's lr)", ("step",)),
        "layer": Field(NO_UNITS, "modules owning parameters (conv, linear, normalization), in "
                                 "registration order: the split of grad_diff by layer",
                       ("layer",)),
        "grad_diff_layer": Field(DIMENSIONLESS, "||grad_l L(theta - eta g) - g_l||_2 over the "
                                                "parameters of layer l; squares sum over layers "
                                                "to grad_diff^2", ("step", "eta", "layer")),
        "grad_norm_layer": Field(DIMENSIONLESS, "||g_l||_2, the gradient norm of layer l's "
                                                "parameters", ("step", "layer")),
    },
    "curvature": {
        "step": Field(DIMENSIONLESS, "0-based training step measured, at theta before its "
                                     "update, on its minibatch (BN in train mode)", ("step",)),
        "eigenvalue": Field(DIMENSIONLESS, "1-based rank of a Hessian eigenvalue (1: the "
                                           "largest)", ("eigenvalue",)),
        "lambda_max": Field(DIMENSIONLESS, "the k largest eigenvalues of the Hessian of the "
                                           "minibatch loss, descending (Lanczos)",
                            ("step", "eigenvalue")),
        "residual": Field(DIMENSIONLESS, "||Hv - lambda v|| / |lambda| of each eigenpair",
                          ("step", "eigenvalue")),
        "trace": Field(DIMENSIONLESS, "Hutchinson estimate of tr H (Rademacher vectors); NaN "
                                      "with --trace-samples 0", ("step",)),
        "gHg": Field(DIMENSIONLESS, "curvature along the normalized gradient, g^T H g / "
                                    "||g||^2", ("step",)),
        "iterations": Field(DIMENSIONLESS, "Hessian-vector products the eigensolver used",
                            ("step",)),
    },
    "weights": {
        "step": Field(DIMENSIONLESS, "0-based training step, before its update", ("step",)),
        "layer": _LAYER,
        "layer_index": _LAYER_INDEX,
        "scale_invariant": Field(DIMENSIONLESS, "1 where the weight feeds a normalization "
                                                "layer, so that L(c w) = L(w)", ("layer",)),
        "norm": Field(DIMENSIONLESS, "||w||_2 of the layer's weight", ("step", "layer")),
        "effective_lr": Field(DIMENSIONLESS, "learning rate / ||w||^2 (the step's effect on a "
                                             "scale-invariant weight's direction)",
                              ("step", "layer")),
        "effective_grad_norm": Field(DIMENSIONLESS, "||w||_2 * ||grad_w L||_2",
                                     ("step", "layer")),
        "angular_update": Field(DIMENSIONLESS, "angle between w_t and w_{t+1}, in radians",
                                ("step", "layer")),
    },
    "ics": {
        "step": Field(DIMENSIONLESS, "0-based training step probed", ("step",)),
        "layer": _LAYER,
        "layer_index": _LAYER_INDEX,
        "l2": Field(DIMENSIONLESS, "||G - G'||_2: G is the layer's weight gradient, G' the same "
                                   "gradient after the layers before it take this step's update",
                    ("step", "layer")),
        "cosine": Field(DIMENSIONLESS, "cos(G, G'), in [-1, 1]", ("step", "layer")),
        "grad_norm": Field(DIMENSIONLESS, "||G||_2, the layer's weight gradient norm",
                           ("step", "layer")),
    },
    "activations": {
        "step": Field(DIMENSIONLESS, "0-based training step probed", ("step",)),
        "layer": _LAYER,
        "layer_index": _LAYER_INDEX,
        "bin": Field(DIMENSIONLESS, "center of each histogram bin, halfway between bin_edges[i] "
                                    "and bin_edges[i + 1]", ("bin",)),
        "bin_edges": Field(DIMENSIONLESS, "edges of the histogram bins (values outside count in "
                                          "the first or last bin)", ("bin_edges",)),
        "mean": Field(DIMENSIONLESS, "mean of the layer's pre-activations on the probed step's "
                                     "minibatch (train mode)", ("step", "layer")),
        "std": Field(DIMENSIONLESS, "standard deviation of those pre-activations",
                     ("step", "layer")),
        "hist": Field(DIMENSIONLESS, "fraction of those pre-activations in each bin; sums to 1 "
                                     "over the bins", ("step", "layer", "bin")),
    },
}

# The Hessian's spectrum, per-layer curvature and ranks (train/hessian_instruments.py).
GROUPS.update({
    "spectrum": "the Hessian's eigenvalue density by stochastic Lanczos quadrature on fixed "
                "Hessian sets of training images, its outliers and the gradient's share of "
                "the top eigenspaces (--spectrum-every; Ghorbani et al. 2019)",
    "layer_curvature": "each weight layer's diagonal Hessian block on the step's minibatch: top "
                       "eigenvalue, Hutchinson trace, lambda x ||w||^2 (--layer-curvature-every)",
    "ranks": "per weight layer on the step's minibatch: the weight's gradient norm and the rank "
             "of the layer's output representation (--rank-every; Yang et al. 2019, Daneshmand "
             "et al. 2020)",
})
_ROW = ("step",)  # a spectrum row: one probed step, one Hessian set, one BN mode
_SPECTRUM_STEP = Field(DIMENSIONLESS, "0-based training step probed, at theta before its update; "
                                      "a step has a row per Hessian set and BN mode", _ROW)
FIELDS.update({
    "spectrum": {
        "step": _SPECTRUM_STEP,
        "repeat": Field(DIMENSIONLESS, "0-based index of the Hessian set (--hessian-repeats "
                                       "disjoint sets of training images)", _ROW),
        "bn": Field(DIMENSIONLESS, "BN mode of the Hessian: index into bn_mode (0 batch: each "
                                   "batch's statistics, train mode; 1 running: eval mode)", _ROW),
        "bn_mode": Field(NO_UNITS, "names of the bn values", ("bn_mode",)),
        "samples": Field(DIMENSIONLESS, "training images in each Hessian set", ()),
        "iterations": Field(DIMENSIONLESS, "Lanczos steps per start vector", ()),
        "vectors": Field(DIMENSIONLESS, "Rademacher start vectors per density", ()),
        "eigenvalue": Field(DIMENSIONLESS, "1-based rank of a top Ritz value (1: the largest)",
                            ("eigenvalue",)),
        "vector": Field(DIMENSIONLESS, "0-based index of the start vector", ("vector",)),
        "node": Field(DIMENSIONLESS, "1-based index of a Ritz value (quadrature node)",
                      ("node",)),
        "grid_point": Field(DIMENSIONLESS, "0-based index of a point of the density's grid",
                            ("grid_point",)),
        "top": Field(DIMENSIONLESS, "the largest distinct Ritz values of the first start vector, "
                                    "descending (the top Hessian eigenvalues once converged)",
                     _ROW + ("eigenvalue",)),
        "grad_fraction": Field(DIMENSIONLESS, "||P_k g||^2 / ||g||^2: share of the set's "
                                              "gradient in the span of the top k Ritz vectors",
                               _ROW + ("eigenvalue",)),
        "lambda_min": Field(DIMENSIONLESS, "the smallest Ritz value", _ROW),
        "trace": Field(DIMENSIONLESS, "n sum_i tau_i theta_i averaged over start vectors: "
                                      "Hutchinson's estimate of tr H", _ROW),
        "trace_stderr": Field(DIMENSIONLESS, "its standard error over start vectors (NaN for "
                                             "one)", _ROW),
        "outliers": Field(DIMENSIONLESS, "eigenvalues separated from the bulk: the top j Ritz "
                                         "values above the last gap wider than the spectrum "
                                         "under it (probes.spectrum's rule)", _ROW),
        "bulk_edge": Field(DIMENSIONLESS, "the largest Ritz value below the outliers", _ROW),
        "grad_in_outliers": Field(DIMENSIONLESS, "grad_fraction at k = outliers (0 with none)",
                                  _ROW),
        "grad_norm": Field(DIMENSIONLESS, "||g||, the gradient of the set's mean batch loss",
                           _ROW),
        "loss": Field(DIMENSIONLESS, "the set's mean batch loss", _ROW),
        "hvps": Field(DIMENSIONLESS, "Hessian-vector products made", _ROW),
        "ritz_values": Field(DIMENSIONLESS, "Ritz values of each start vector, ascending; NaN "
                                            "past an early stop", _ROW + ("vector", "node")),
        "ritz_weights": Field(DIMENSIONLESS, "their quadrature weights (each vector's sum to 1)",
                              _ROW + ("vector", "node")),
        "grid": Field(DIMENSIONLESS, "eigenvalues at which the density is drawn",
                      _ROW + ("grid_point",)),
        "density": Field(DIMENSIONLESS, "the Gaussian-smoothed spectral density (PyHessian's "
                                        "sigma), integrating to 1 over the grid",
                         _ROW + ("grid_point",)),
    },
    "layer_curvature": {
        "step": Field(DIMENSIONLESS, "0-based training step probed, at theta before its update, "
                                     "on its minibatch", ("step",)),
        "layer": _LAYER,
        "layer_index": _LAYER_INDEX,
        "scale_invariant": Field(DIMENSIONLESS, "1 where the weight feeds a normalization layer",
                                 ("layer",)),
        "lambda_max": Field(DIMENSIONLESS, "top eigenvalue of the layer's diagonal Hessian block "
                                           "(its weight and bias)", ("step", "layer")),
        "trace": Field(DIMENSIONLESS, "Hutchinson estimate of the block's trace",
                       ("step", "layer")),
        "weight_norm_sq": Field(DIMENSIONLESS, "||w||^2 of the layer's weight",
                                ("step", "layer")),
        "scaled_lambda": Field(DIMENSIONLESS, "lambda_max x ||w||^2: comparable across "
                                              "scale-invariant layers", ("step", "layer")),
    },
    "ranks": {
        "step": Field(DIMENSIONLESS, "0-based training step probed, at theta before its update, "
                                     "on its minibatch", ("step",)),
        "layer": _LAYER,
        "layer_index": _LAYER_INDEX,
        "grad_norm": Field(DIMENSIONLESS, "||grad_W L|| of the layer's weight",
                           ("step", "layer")),
        "rank": Field(DIMENSIONLESS, "numerical rank of the layer's output representation "
                                     "(batch x features; torch.linalg.matrix_rank's tolerance)",
                      ("step", "layer")),
        "effective_rank": Field(DIMENSIONLESS, "exp of the entropy of its normalized singular "
                                               "values", ("step", "layer")),
        "size": Field(DIMENSIONLESS, "min(batch, features): the largest rank possible",
                      ("step", "layer")),
    },
})

STEP_FIELDS = ("step", "epoch", "loss", "grad_norm", "grad_diff", "beta_consecutive",
               "learning_rate")
# The train-mode vs eval-mode statistics of a fixed training subset, per epoch.
MODE_FIELDS = ("train_mode_loss", "train_mode_acc", "eval_mode_loss", "eval_mode_acc")
EPOCH_FIELDS = ("epoch", "steps", "train_loss", "train_acc", "test_loss", "test_acc",
                "seconds") + MODE_FIELDS
# Fields that files written before they existed lack: read as this fill value (and written
# as it by ``RunLog.add_epoch`` when a run does not measure them).
ADDED_FIELDS = {("epochs", "steps"): -1, **{("epochs", f): float("nan") for f in MODE_FIELDS},
                ("steps", "learning_rate"): float("nan"),
                ("probe", "learning_rate"): float("nan")}
# Added fields that files written before them read as a run attribute instead of a fill: the
# learning rate, constant then (ADDED_FIELDS' NaN: rows written without one, e.g. by hand).
ADDED_FROM_ATTRS = {("steps", "learning_rate"): "lr", ("probe", "learning_rate"): "lr"}
PROBE_ROW_FIELDS = ("step", "beta", "grad_norm", "loss_at_theta", "learning_rate")  # (n,)
PROBE_GRID_FIELDS = ("loss", "grad_diff")  # (n, k)
# The probe split by layer (L modules owning parameters), with a ``layer`` (L,) name dataset;
# absent in files written before it existed. Field -> its row shape from (k, L).
PROBE_LAYER_FIELDS = {"grad_diff_layer": lambda k, n_layers: (k, n_layers),
                      "grad_norm_layer": lambda k, n_layers: (n_layers,)}
# Instrument groups declared at run time (train/instruments.py), read back by read.py.
CURVATURE_FIELDS = ("step", "lambda_max", "trace", "gHg", "iterations")  # lambda_max (n, k)
WEIGHT_FIELDS = ("norm", "effective_lr", "effective_grad_norm", "angular_update")  # (n, L)
INT_FIELDS = {"step", "epoch", "steps"}
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")

# The weights a run saved (train/snapshots.py: --save-weights-every, --save-weights-at): one
# row per safetensors file in the folder its attribute ``weights_dir`` names.
GROUPS["snapshots"] = ("the steps whose parameters and buffers the run saved, one safetensors "
                       "file each (step-XXXXXXXX.safetensors in the folder of the run attribute "
                       "weights_dir)")
FIELDS["snapshots"] = {
    "step": Field(DIMENSIONLESS, "optimizer steps taken when the weights were saved (0: the "
                                 "initial weights)", ("step",)),
}
