"""Network specs (networks/*.toml): validated architectures that build :class:`~xbar.nn.Network`s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import (
    check_keys,
    find_preset,
    load_named_toml,
    preset_names,
    validate_fields,
    where_text,
)
from ..errors import ConfigError
from ..tile.arrays import check_fits, crossbar_bytes
from .conv import Conv2d
from .layers import CrossbarLayer, Dense
from .layerspec import (
    CROSSBAR_KINDS,
    MAX_UNITS,
    OUTPUT_LAYER_FIELDS,
    SPEC_FIELDS,
    SPEC_KEYS,
    LayerSpec,
    input_shape,
    layer_spec,
)
from .network import Network
from .periphery import BatchNorm, Dropout, Pool, Residual


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) + (" feature maps" if len(shape) == 3 else " values")


@dataclass(frozen=True)
class NetworkSpec:
    """An architecture without its number of classes (and, for MLPs, its input size): both come
    from the dataset.

    TOML: ``hidden = [100, 100]`` is shorthand for dense hidden layers with the network's
    ``activation``; ``[[layers]]`` tables say the same layer by layer and add the other kinds:

    - ``kind = "dense"``: ``units``;
    - ``kind = "conv"``: ``filters``, ``kernel``, ``stride`` (1), ``padding`` (0), ``in_channels``
      (optional, checked);
    - both take ``activation``, ``batchnorm``, ``weights``, ``scale``, ``bits``, ``bias``,
      overriding the network's keys of the same names;
    - ``kind = "maxpool"`` / ``"avgpool"``: ``size`` (2), ``stride`` (size), ``pre_activation``
      (false: pool the layer's outputs; true: pool its crossbar outputs before batch norm and
      activation, BNN's order; then it must directly follow the conv layer);
      ``kind = "dropout"``: ``p``; ``kind = "flatten"``: ``size`` (optional, checked);
    - ``kind = "add"`` (a skip connection, ResNet's z = f(y + s)): ``from`` (the [[layers]] index
      whose output s is, -1 for the network's input; s must have the shape of the current output y)
      and ``activation`` (after the addition; "identity" for none). Like pooling, it runs in the
      periphery of the conv/dense layer before it, after that layer's activation (a ResNet block's
      second conv says ``activation = "identity"`` and the add ``activation = "relu"``);
    - ``branch = true`` on a conv/dense layer (a projection shortcut): it reads the same input as
      the layer after it, and only a later add reads its output (``from`` = its index).

    A conv/dense layer computes crossbar → batch norm → activation; pooling and dropout attach
    to the conv/dense layer before them (they run in its digital periphery), after its activation
    unless a pooling layer says ``pre_activation = true``. Networks with
    convolutions give ``input = [channels, height, width]``, so shapes are checked when the spec
    is loaded (kernel larger than its input, channel mismatch, flatten size, a dense layer on
    feature maps). The output layer is always dense, without activation, followed by ``output``;
    an ``[output_layer]`` table sets its ``weights``, ``scale``, ``bits`` and ``bias``.
    """

    name: str
    source: str
    description: str
    activation: str
    output: str
    bias: bool
    layers: tuple[LayerSpec, ...]
    file: str | None = None
    weights: str = "real"
    scale: str = "none"
    batchnorm: bool = False
    input: tuple[int, int, int] | None = None
    output_layer: LayerSpec = LayerSpec("dense", None, "identity")   # noqa: RUF009 (frozen)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None) -> NetworkSpec:
        check_keys(data, SPEC_KEYS, file=file)
        scalars = {k: v for k, v in data.items() if k not in ("hidden", "layers", "input", "output_layer")}
        values = validate_fields(SPEC_FIELDS, scalars, file=file)
        if ("hidden" in data) == ("layers" in data):
            raise ConfigError(f"{where_text(file, 'hidden')}: give either hidden = [widths] or "
                              "[[layers]] tables (exactly one of them)")
        defaults = {k: values[k] for k in ("activation", "batchnorm", "weights", "scale", "bias")}
        layers = []
        if "hidden" in data:
            hidden = data["hidden"]
            if not isinstance(hidden, (list, tuple)):
                raise ConfigError(f"{where_text(file, 'hidden')} = {hidden!r}: expected a list of "
                                  "integers >= 1, e.g. [100, 100] (or [] for none)")
            for i, h in enumerate(hidden):
                if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= MAX_UNITS:
                    raise ConfigError(f"{where_text(file, f'hidden[{i}]')} = {h!r}: expected an "
                                      f"integer in [1, {MAX_UNITS}]")
                layers.append(LayerSpec("dense", h, **defaults))
        else:
            tables = data["layers"]
            if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
                raise ConfigError(f"{where_text(file, 'layers')}: expected [[layers]] tables")
            layers = [layer_spec(t, i, defaults, file) for i, t in enumerate(tables)]
        out = data.get("output_layer", {})
        if not isinstance(out, dict):
            raise ConfigError(f"{where_text(file, 'output_layer')}: expected an [output_layer] table "
                              f"with keys {', '.join(f.name for f in OUTPUT_LAYER_FIELDS)}")
        ov = validate_fields(OUTPUT_LAYER_FIELDS, out, file=file, prefix="output_layer.")
        output_layer = LayerSpec("dense", None, "identity", bits=ov["bits"],
                                 **{k: defaults[k] if ov[k] is None else ov[k] for k in ("weights", "scale", "bias")})
        spec = cls(**values, layers=tuple(layers), file=file, output_layer=output_layer,
                   input=input_shape(data.get("input"), file))
        if spec.input is not None:
            spec._walk(math.prod(spec.input))   # shapes are checked now, not at the first batch
        elif any(layer.kind in ("conv", "maxpool", "avgpool") for layer in layers):
            raise ConfigError(f"{where_text(file, 'input')}: a network with conv or pooling layers needs "
                              "input = [channels, height, width], e.g. [1, 28, 28] for Fashion-MNIST")
        else:
            spec._walk(None)   # order checks (pooling/dropout placement) that need no shapes
        return spec

    @classmethod
    def from_toml(cls, path: str | Path) -> NetworkSpec:
        return cls.from_dict(load_named_toml(path), file=str(path))

    @classmethod
    def preset(cls, name: str) -> NetworkSpec:
        """A preset from networks/ by name (unknown names list the known ones), or a TOML path."""
        return cls.from_toml(find_preset("networks", name))

    @staticmethod
    def presets() -> list[str]:
        return preset_names("networks")

    # -- shapes -------------------------------------------------------------------------------
    def _where(self, i: int) -> str:
        return f"{where_text(self.file, f'layers[{i}]')} ({self.layers[i].kind})"

    def _walk(self, n_in: int | None) -> list[tuple[int, ...]]:
        """The input shape of every layer and, last, of the output layer: (C, H, W) for feature
        maps, (n,) for flat vectors (None entries where n_in is unknown). Raises ConfigError naming
        the layer for anything that cannot be built."""
        return self._plan(n_in)[0]

    def _plan(self, n_in: int | None) -> tuple[list[tuple[int, ...]], dict[int, int]]:
        """(_walk's shapes, {index of an add entry: the crossbar layer whose output it adds, -1 for
        the network's input}). Crossbar layers are numbered in order, branches included; pooling,
        dropout and add run in the last non-branch conv/dense layer before them."""
        shape: tuple[int, ...] | None
        if self.input is not None:
            shape = tuple(self.input)
        else:
            shape = None if n_in is None else (int(n_in),)
        input_shape = shape
        shapes: list[tuple[int, ...]] = []
        n_layers, last_main, chain_owner = 0, -1, -1
        after_branch = None             # the index of a branch entry not yet followed by a conv/dense
        value_owner: list[int] = []     # per entry: the layer whose output is the value after it
        value_shape: list = []
        last_touch: dict[int, int] = {}   # layer -> the last entry that changed its output
        unused_branches: dict[int, int] = {}   # layer -> entry
        sources: dict[int, int] = {}
        for i, ls in enumerate(self.layers):
            shapes.append(shape)
            where = self._where(i)
            if ls.pre_activation and not (i > 0 and ((self.layers[i - 1].kind == "conv" and not self.layers[i - 1].branch)
                                                     or self.layers[i - 1].pre_activation)):
                raise ConfigError(f"{where}: pre_activation = true pools a conv layer's outputs before its "
                                  "batch norm and activation: it must come right after that conv layer")
            if ls.kind in ("maxpool", "avgpool", "dropout", "add"):
                if last_main < 0:
                    raise ConfigError(f"{where}: must follow a conv or dense layer (pooling, dropout and "
                                      "residual additions run in that layer's digital periphery)")
                if after_branch is not None:
                    raise ConfigError(f"{where}: follows the branch layer {self._where(after_branch)}; it "
                                      "would run in the layer before the branch, so put it before the branch")
            maps = shape is not None and len(shape) == 3
            if ls.kind in ("conv", "maxpool", "avgpool") and not maps:
                raise ConfigError(f"{where}: needs feature maps, but its input is "
                                  f"{'a flat vector' if shape is None else _shape_text(shape)} (after a dense "
                                  "or flatten layer); put it before those")
            out = shape
            if ls.kind == "conv":
                C, H, W = shape
                k, s, p = ls.kernel, ls.stride, ls.padding
                if ls.in_channels is not None and ls.in_channels != C:
                    raise ConfigError(f"{where}: in_channels = {ls.in_channels}, but its input "
                                      f"({_shape_text(shape)}) has {C} channels")
                if k > H + 2 * p or k > W + 2 * p:
                    raise ConfigError(f"{where}: kernel {k}x{k} is larger than its {H}x{W} input "
                                      f"(padding {p}); use a smaller kernel, more padding or less pooling "
                                      "before it")
                out = (ls.units, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
            elif ls.kind in ("maxpool", "avgpool"):
                C, H, W = shape
                size, step = ls.size, ls.stride or ls.size
                if size > H or size > W:
                    raise ConfigError(f"{where}: window {size}x{size} is larger than its {H}x{W} input; "
                                      "use a smaller size or less pooling before it")
                out = (C, (H - size) // step + 1, (W - size) // step + 1)
            elif ls.kind == "flatten":
                if shape is not None:
                    n = math.prod(shape)
                    if ls.size is not None and ls.size != n:
                        raise ConfigError(f"{where}: size = {ls.size}, but its input ({_shape_text(shape)}) "
                                          f"flattens to {n} values; fix size or the layers before it")
                    out = (n,)
            elif ls.kind == "dense":
                if maps:
                    raise ConfigError(f"{where}: its input is {_shape_text(shape)}; put a [[layers]] "
                                      'kind = "flatten" before it')
                out = (ls.units,)
            elif ls.kind == "add":
                k = ls.source
                if not -1 <= k < i:
                    raise ConfigError(f"{where_text(self.file, f'layers[{i}].from')} = {k}: expected an "
                                      f"earlier [[layers]] index (0..{i - 1}) or -1 for the network's input")
                src, src_shape = (-1, input_shape) if k < 0 else (value_owner[k], value_shape[k])
                if src >= 0 and last_touch[src] > k:
                    j = last_touch[src]
                    raise ConfigError(f"{where}: from = {k}, but {self._where(j)} still changes that layer's "
                                      f"output after it; use from = {j}")
                if src == last_main:
                    raise ConfigError(f"{where}: from = {k} is the output of the layer this addition runs "
                                      "in; a skip connection adds the output of an earlier layer")
                if shape is not None and src_shape is not None and tuple(src_shape) != tuple(shape):
                    raise ConfigError(f"{where}: adds {_shape_text(src_shape)} (the output of "
                                      f"{'the input' if k < 0 else self._where(k)}) to {_shape_text(shape)}; "
                                      "the two paths must give the same shape")
                sources[i] = src
                unused_branches.pop(src, None)
            if ls.kind in CROSSBAR_KINDS:
                if ls.branch:
                    unused_branches[n_layers] = i
                    after_branch = i
                    value_owner.append(n_layers)
                    value_shape.append(out)
                    last_touch[n_layers] = i
                    n_layers += 1
                    continue
                after_branch = None
                last_main = chain_owner = n_layers
                last_touch[n_layers] = i
                n_layers += 1
            elif ls.kind != "flatten":
                last_touch[last_main] = i
            shape = out
            value_owner.append(chain_owner)
            value_shape.append(shape)
        if unused_branches:
            j = next(iter(unused_branches.values()))
            raise ConfigError(f"{self._where(j)}: branch = true, but no later add reads it (from = {j}); "
                              "a branch layer's output goes only to a residual addition")
        if after_branch is not None:
            raise ConfigError(f"{self._where(after_branch)}: a branch layer must be followed by the layer "
                              "that reads the same input; the output layer cannot be one")
        if shape is not None and len(shape) == 3:
            raise ConfigError(f"{where_text(self.file, 'layers')}: the output layer is dense, but the last "
                              f"layer gives {_shape_text(shape)}; end with a [[layers]] kind = \"flatten\"")
        shapes.append(shape)
        return shapes, sources

    def _check_input(self, n_in: int, plan: bool = False):
        if self.input is not None and n_in != math.prod(self.input):
            raise ConfigError(f"network {self.name!r} takes inputs of shape {'x'.join(map(str, self.input))} "
                              f"({math.prod(self.input)} values per sample), but the data has {n_in} values "
                              "per sample; use a dataset of that shape or change input in the network file")
        return self._plan(n_in) if plan else self._walk(n_in)

    def widths(self, n_in: int, n_classes: int) -> list[int]:
        """Flat widths from input to output, one per crossbar layer boundary: e.g. [784, 100, 100,
        10]; for a convolution, the size of its output after its pooling."""
        shapes = self._check_input(n_in)
        out = [n_in]
        seen = False
        for ls, shape in zip(self.layers, shapes):
            if ls.kind in CROSSBAR_KINDS:
                if seen:
                    out.append(math.prod(shape))
                seen = True
        if seen:
            out.append(math.prod(shapes[-1]))
        return out + [n_classes]

    def crossbar_shapes(self, n_in: int, n_classes: int) -> list[tuple[int, int, int]]:
        """(rows, cols, positions) of every crossbar layer's W, output layer last: rows = inputs
        (k·k·C for a convolution), positions = output positions per sample (1 for dense)."""
        shapes = self._check_input(n_in)
        out = []
        for ls, shape in zip(self.layers, shapes):
            if ls.kind == "dense":
                out.append((int(shape[0]), ls.units, 1))
            elif ls.kind == "conv":
                C, H, W = shape
                k, st, pd = ls.kernel, ls.stride, ls.padding
                out.append((C * k * k, ls.units, ((H + 2 * pd - k) // st + 1) * ((W + 2 * pd - k) // st + 1)))
        n_last = n_in if shapes[-1] is None else math.prod(shapes[-1])
        return out + [(int(n_last), int(n_classes), 1)]

    def memory_bytes(self, n_in: int, n_classes: int, tile: tuple[int, int] | None = None,
                     batch_size: int = 64) -> tuple[int, tuple[int, int]]:
        """(rough bytes a training run needs, (rows, cols) of the largest layer).

        tile None: weights in digital memory only (update "float"); else crossbars of that tile
        size, whose per-tile arrays are padded to whole tiles.
        """
        total, largest = 0, (0, 0)
        for rows, cols, pos in self.crossbar_shapes(n_in, n_classes):
            rows += 1   # a bias row (in-situ schemes put the bias on the array)
            # W, its gradient, two optimizer moments (float32) and float64 copies during updates
            total += 32 * rows * cols
            if tile is not None:
                total += crossbar_bytes(rows, cols, tile)
            # im2col rows, outputs and their derivatives for one batch (float32)
            total += 4 * batch_size * pos * (2 * rows + 4 * cols)
            largest = max(largest, (rows - 1, cols), key=lambda rc: rc[0] * rc[1])
        return total, largest

    def check_memory(self, n_in: int, n_classes: int, tile: tuple[int, int] | None = None,
                     batch_size: int = 64, what: str = "") -> None:
        """Refuse (ConfigError) a network whose arrays would not fit in this machine's memory."""
        need, (rows, cols) = self.memory_bytes(n_in, n_classes, tile, batch_size)
        check_fits(need, f"network {self.name!r}" + (f" with tile {tile[0]}x{tile[1]}" if tile else "")
                   + (f" {what}" if what else "") + f" (largest layer {rows}x{cols})",
                   "use fewer units" + (", a smaller tile" if tile else "") + " or a smaller batch")

    def build(self, n_in: int, n_classes: int, rng: np.random.Generator) -> Network:
        """Instantiate the layers (weights drawn from `rng`, layer by layer, W before b)."""
        shapes, sources = self._check_input(n_in, plan=True)
        self.check_memory(n_in, n_classes, batch_size=1)
        layers: list[CrossbarLayer] = []
        main: CrossbarLayer | None = None   # the last non-branch layer: pooling, dropout, add run in it
        for i, (ls, shape) in enumerate(zip(self.layers, shapes)):
            bn = None
            if ls.kind in CROSSBAR_KINDS and ls.batchnorm:
                bn = BatchNorm(ls.units)
            opts = {"rng": rng, "bias": ls.bias, "weights": ls.weights, "scale": ls.scale, "bits": ls.bits,
                    "batchnorm": bn}
            if ls.kind == "dense":
                layers.append(Dense(shape[0], ls.units, ls.activation, **opts))
            elif ls.kind == "conv":
                # the first layer that is no branch, and the branches before it, read the dataset's rows
                layers.append(Conv2d(shape, ls.units, ls.kernel, ls.activation, stride=ls.stride,
                                     padding=ls.padding, chw_input=main is None and shape[0] > 1, **opts))
            elif ls.kind in ("maxpool", "avgpool"):
                pool = Pool(ls.kind[:3], ls.size, ls.stride)
                (main.add_head if ls.pre_activation else main.add_tail)(pool)
            elif ls.kind == "dropout":
                main.add_tail(Dropout(ls.p, np.random.default_rng(rng.integers(2 ** 63))))
            elif ls.kind == "add":
                main.add_tail(Residual(sources[i], ls.activation))
            if ls.kind in CROSSBAR_KINDS:
                layers[-1].branch = ls.branch
                if not ls.branch:
                    main = layers[-1]
        ol = self.output_layer
        n_last = n_in if shapes[-1] is None else math.prod(shapes[-1])
        layers.append(Dense(n_last, n_classes, "identity", rng=rng, bias=ol.bias, weights=ol.weights,
                            scale=ol.scale, bits=ol.bits))
        return Network(layers, self.output, self.name, input_shape=self.input)
