"""The file's schema in one place: the groups every run has, their fields, the run statuses.

Groups that instruments add (``ics/``, ``activations/``) are declared at run time through
``RunLog.declare``. The README's "HDF5 schema" section documents every field.
"""

SCHEMA_VERSION = 1
STEP_FIELDS = ("step", "epoch", "loss", "grad_norm", "grad_diff", "beta_consecutive")
EPOCH_FIELDS = ("epoch", "steps", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")
# Fields that files written before they existed lack: read as this fill value.
ADDED_FIELDS = {("epochs", "steps"): -1}
PROBE_ROW_FIELDS = ("step", "beta", "grad_norm", "loss_at_theta")  # (n,)
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
