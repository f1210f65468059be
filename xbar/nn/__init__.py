"""Layers and networks whose weights live on crossbars: forward, derivatives and explicit caches.

A crossbar layer (:class:`Dense`, or :class:`Conv2d`) computes ``a = cols W + b`` with W
stored (rows, out) and then, all in digital periphery, an optional batch norm, the activation and
a tail of pooling / dropout: ``z = tail(f(bn(a)))``. For Dense the rows are the input itself
(cols = x); a convolution presents W as (k·k·C_in, C_out) and turns its input into im2col rows,
one per output position, so the crossbar and the update schemes treat both alike. Where W lives
is decided from outside (by the update scheme in :mod:`xbar.train.updates`):

- ``layer.crossbar is None``: W is a plain float32 matrix in digital memory (update "float");
- otherwise the forward pass is ``crossbar.mvm(cols)`` on the programmed, quantized, noisy devices
  and :meth:`CrossbarLayer.backward_input` is ``crossbar.mvm_t(delta)``: Wᵀ read from the same arrays.

Layers do not know which training rule runs: a rule (:mod:`xbar.train.rules`) decides what
travels backward and calls :meth:`CrossbarLayer.local_delta` (back through the tail, f'(a) and the
batch norm) to get delta = dL/da at the crossbar's outputs.

Sizes: ``n_in``, ``n_out`` are W's shape (crossbar rows and columns; what the update schemes
use); ``in_size``, ``out_size`` are the widths of the flat (batch, features) arrays that travel
between layers (what DFA, HSIC and SG see). They coincide for a Dense layer without a tail.
Feature maps travel as (batch, H·W·C) rows, channels last; a network's input rows are the
dataset's C×H×W order, which the first convolution transposes.

Binary weights (BinaryConnect / BNN / XNOR-Net): with ``weights = "binary"`` the
layer stores real latent weights W, clipped to [-1, 1] after every optimizer step
(``post_update``), and uses Ŵ = sign(W) (optionally times α_j = mean_i |W_ij| per output column,
``scale = "mean"``) for the forward and backward passes and for programming the devices.

A network is described by a TOML preset in ``networks/`` (see :class:`NetworkSpec`); its number
of classes (and, for MLPs, its input size) come from the dataset.

Modules, each below its users: :mod:`~xbar.nn.functions` (activations, losses, binary weights),
:mod:`~xbar.nn.ops` (im2col and pooling), :mod:`~xbar.nn.layers` (``CrossbarLayer``, ``Dense``),
:mod:`~xbar.nn.periphery` (pooling, dropout, residual additions, batch norm),
:mod:`~xbar.nn.conv` (``Conv2d``), :mod:`~xbar.nn.network` (``Network``),
:mod:`~xbar.nn.layerspec` and :mod:`~xbar.nn.spec` (``NetworkSpec``, networks/*.toml).
"""

from .conv import Conv2d
from .functions import (
    ACTIVATIONS,
    HIDDEN_ACTIVATIONS,
    OUTPUTS,
    binarize,
    binary_grad,
    log_softmax,
    loss_and_error,
    sign,
)
from .layers import SCALES, WEIGHTS, Cache, CrossbarLayer, Dense
from .layerspec import (
    CROSSBAR_KINDS,
    LAYER_FIELDS,
    LAYER_KINDS,
    MAX_UNITS,
    OUTPUT_LAYER_FIELDS,
    SPEC_FIELDS,
    SPEC_KEYS,
    LayerSpec,
)
from .network import PREDICT_BUDGET, Network
from .ops import (
    avgpool2d,
    avgpool2d_backward,
    col2im,
    col2im_reference,
    conv_out,
    im2col,
    im2col_reference,
    maxpool2d,
    maxpool2d_backward,
    patches,
    pool_reference,
)
from .periphery import BatchNorm, Dropout, Pool, Residual
from .spec import NetworkSpec

__all__ = ["ACTIVATIONS", "CROSSBAR_KINDS", "HIDDEN_ACTIVATIONS", "LAYER_FIELDS", "LAYER_KINDS", "MAX_UNITS",
           "OUTPUTS", "OUTPUT_LAYER_FIELDS", "PREDICT_BUDGET", "SCALES", "SPEC_FIELDS", "SPEC_KEYS", "WEIGHTS",
           "BatchNorm", "Cache", "Conv2d", "CrossbarLayer", "Dense", "Dropout", "LayerSpec", "Network",
           "NetworkSpec", "Pool", "Residual", "avgpool2d", "avgpool2d_backward", "binarize", "binary_grad",
           "col2im", "col2im_reference", "conv_out", "im2col", "im2col_reference", "log_softmax",
           "loss_and_error", "maxpool2d", "maxpool2d_backward", "patches", "pool_reference", "sign"]
