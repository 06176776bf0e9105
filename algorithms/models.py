"""Backbones of the MAML paper: the sinusoid MLP and the four-block convolutional network."""

from __future__ import annotations

import keras
from keras import ops


class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalization whose batch moments are differentiable to any order on every backend.

    Keras's TensorFlow backend takes moments with ``tf.nn.moments``, which stops the gradient of
    the mean inside the variance: first derivatives are still exact (the variance is stationary
    in the mean), but second derivatives are not, so second-order MAML's meta-gradient through
    batch statistics would be wrong on TensorFlow and right on JAX. This layer computes the same
    moments with ``keras.ops`` and nothing stopped.
    """

    def _moments(self, inputs, mask):
        if mask is not None:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        mean = ops.mean(inputs, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(inputs - mean), axis=axes)
        return ops.squeeze(mean, axis=axes), variance


class MatmulConv2D(keras.layers.Conv2D):
    """A 2-D convolution computed as image patches times the kernel matrix (im2col).

    Same weights, same results (to float rounding) and same options as ``keras.layers.Conv2D``
    for ``channels_last`` inputs, no dilation and no groups; only the computation differs. When an
    engine maps a model over tasks that each have their own weights (``jax.vmap`` over adapted
    parameters), a native convolution becomes a grouped convolution, one group per task, which
    some kernels run slowly; this form becomes a batched matrix product instead.

    Call: ``x [batch, H, W, C] -> [batch, H', W', filters]``; the patches are
    ``[batch, H', W', kh * kw * C]``, ordered as the kernel ``[kh, kw, C, filters]`` flattens.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.data_format != "channels_last" or any(d != 1 for d in self.dilation_rate) or self.groups != 1:
            raise ValueError(
                f"MatmulConv2D takes channels_last inputs without dilation or groups; received "
                f"data_format={self.data_format!r}, dilation_rate={self.dilation_rate}, groups={self.groups}. "
                "Use keras.layers.Conv2D for those."
            )

    def convolution_op(self, inputs, kernel):
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        if self.padding == "same":
            out_h, out_w = -(-height // sh), -(-width // sw)
            pad_h, pad_w = max((out_h - 1) * sh + kh - height, 0), max((out_w - 1) * sw + kw - width, 0)
            inputs = ops.pad(inputs, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        else:
            out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
        taps = [
            inputs[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]
        patches = ops.concatenate(taps, axis=-1)
        return ops.matmul(patches, ops.reshape(kernel, (kh * kw * channels, self.filters)))


#: ``conv4``'s ``conv`` option: how its convolutions are computed.
CONV_FORMS = {"native": keras.layers.Conv2D, "matmul": MatmulConv2D}

#: ``conv4``'s ``activation`` option. ``"leaky_relu"`` has PyTorch's default slope 0.01 (what
#: ``F.leaky_relu`` in the MAML++ reference code uses), not Keras's default 0.3.
ACTIVATIONS = {"relu": lambda **kw: keras.layers.ReLU(**kw), "leaky_relu": lambda **kw: keras.layers.LeakyReLU(negative_slope=0.01, **kw)}

#: ``conv4``'s ``features`` option: how the last block's map becomes the linear layer's input.
FEATURES = {"flatten": lambda **kw: keras.layers.Flatten(**kw), "mean": lambda **kw: keras.layers.GlobalAveragePooling2D(**kw)}

#: ``conv4``'s ``head_init`` option: the initializer of the linear layer's kernel (its bias starts at 0).
#: conv4's ``dtype_policy`` values: Keras dtype policies (variables are float32 under both).
DTYPE_POLICIES = ("float32", "mixed_bfloat16")
HEAD_INITS = {"glorot_uniform": lambda: "glorot_uniform", "normal": lambda: keras.initializers.RandomNormal(stddev=1.0)}


def conv4(
    input_shape,
    num_classes: int,
    *,
    filters: int = 64,
    strided: bool = True,
    batch_norm: bool = True,
    bn_momentum: float = 0.9,
    conv: str = "native",
    activation: str = "relu",
    bn_epsilon: float = 1e-3,
    bn_scale: bool = True,
    features: str = "flatten",
    head_init: str = "glorot_uniform",
    dtype_policy: str = "float32",
) -> keras.Model:
    """Four blocks of [3x3 conv, batch norm, ReLU] then flatten and a linear layer.

    With ``strided=True`` each conv has stride 2 ("same" padding, TensorFlow's: 28 -> 14 -> 7 -> 4
    -> 2, so 2x2x64 = 256 features; the MAML Omniglot network). With ``strided=False`` each conv
    has stride 1 ("same" padding, i.e. PyTorch's ``padding=1`` for 3x3) and is followed, after the
    activation, by 2x2 max-pooling with stride 2 and no padding (28 -> 14 -> 7 -> 3 -> 1, so 64
    features): the MAML paper's miniImageNet network (32 filters there), Closer Look's ``Conv4S``
    and, with ``activation="leaky_relu"`` and ``bn_epsilon=1e-5``, the MAML++ reference code's
    Omniglot network.

    ``bn_momentum`` is Keras's convention (PyTorch's momentum 0.1 is 0.9 here); it only matters for
    algorithms that keep running statistics (MAML++ with per-step statistics, the baselines).
    ``bn_epsilon``: Keras's default 1e-3, or PyTorch's 1e-5 (the reference codes of MAML++ and
    Closer Look). ``activation``: ``"relu"`` or ``"leaky_relu"`` (slope 0.01, PyTorch's default).
    ``bn_scale=False`` drops batch norm's learnable scale (gamma), keeping the offset: the default of
    TensorFlow's ``tf.contrib.layers.batch_norm``, which the MAML code uses.

    ``features``: ``"flatten"`` (the last map flattened) or ``"mean"`` (its spatial mean, one value
    per filter: the MAML code's Omniglot network, ``tf.reduce_mean(hidden4, [1, 2])``, so the
    linear layer sees 64 features with strided convs too). ``head_init``: the linear layer's
    kernel initializer, ``"glorot_uniform"`` (Keras's default) or ``"normal"`` (standard normal,
    the MAML code's Omniglot ``w5 = tf.random_normal(...)``).

    ``conv``: ``"native"`` (``keras.layers.Conv2D``) or ``"matmul"`` (:class:`MatmulConv2D`, the
    same convolutions as patches times a matrix: faster under the JAX engine's ``vmap`` over tasks,
    where per-task weights would make native convolutions grouped ones).

    ``dtype_policy``: ``"float32"``, or ``"mixed_bfloat16"`` (Keras's mixed precision: the blocks
    compute in bfloat16 from float32 weights, batch norm takes its moments in float32, and the
    features and the head are float32, so features, logits, losses and every gradient, meta-gradients
    included, are float32).

    Call: ``x [batch, H, W, C] -> logits [batch, num_classes]``. For 28x28x1 inputs and stride 2 the
    flattened features are 2x2x64 = 256 (64 with ``features="mean"``); with max-pooling 1x1x64 = 64.
    """
    if conv not in CONV_FORMS:
        raise ValueError(f"Received conv={conv!r}; expected one of {sorted(CONV_FORMS)}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"Received activation={activation!r}; expected one of {sorted(ACTIVATIONS)}.")
    if not bn_epsilon > 0:
        raise ValueError(f"Received bn_epsilon={bn_epsilon}; expected a small positive number (1e-3 Keras, 1e-5 PyTorch).")
    if features not in FEATURES:
        raise ValueError(f"Received features={features!r}; expected one of {sorted(FEATURES)}.")
    if head_init not in HEAD_INITS:
        raise ValueError(f"Received head_init={head_init!r}; expected one of {sorted(HEAD_INITS)}.")
    if dtype_policy not in DTYPE_POLICIES:
        raise ValueError(f"Received dtype_policy={dtype_policy!r}; expected one of {list(DTYPE_POLICIES)}.")
    inputs = keras.Input(tuple(input_shape))
    x = inputs
    body = {"dtype": dtype_policy} if dtype_policy != "float32" else {}  # float32: Keras's global policy, as before
    for _ in range(4):
        x = CONV_FORMS[conv](filters, 3, strides=2 if strided else 1, padding="same", **body)(x)
        if batch_norm:
            x = BatchNorm(momentum=bn_momentum, epsilon=bn_epsilon, scale=bn_scale, **body)(x)
        x = ACTIVATIONS[activation](**body)(x)
        if not strided:
            x = keras.layers.MaxPooling2D(2, **body)(x)
    full = {"dtype": "float32"} if body else {}  # features and head in float32: what an algorithm reads off the body
    x = FEATURES[features](**full)(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=HEAD_INITS[head_init](), **full)(x)
    return keras.Model(inputs, outputs, name="conv4")


def mlp(input_dim: int, output_dim: int, *, hidden=(40, 40)) -> keras.Model:
    """The MAML sinusoid network: ``x [batch, input_dim] -> [batch, output_dim]``, ReLU hidden layers."""
    inputs = keras.Input((input_dim,))
    x = inputs
    for width in hidden:
        x = keras.layers.Dense(int(width), activation="relu")(x)
    outputs = keras.layers.Dense(output_dim)(x)
    return keras.Model(inputs, outputs, name="mlp")
