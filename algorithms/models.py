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


def conv4(
    input_shape, num_classes: int, *, filters: int = 64, strided: bool = True, batch_norm: bool = True, bn_momentum: float = 0.9
) -> keras.Model:
    """Four blocks of [3x3 conv, batch norm, ReLU] then flatten and a linear layer.

    With ``strided=True`` each conv has stride 2 (the MAML Omniglot network); otherwise stride 1
    followed by 2x2 max-pooling (the miniImageNet network, 32 filters in the paper).

    ``bn_momentum`` is Keras's convention (PyTorch's momentum 0.1 is 0.9 here); it only matters for
    algorithms that keep running statistics (MAML++ with per-step statistics, the baselines).

    Call: ``x [batch, H, W, C] -> logits [batch, num_classes]``. For 28x28x1 inputs and stride 2 the
    flattened features are 2x2x64 = 256.
    """
    inputs = keras.Input(tuple(input_shape))
    x = inputs
    for _ in range(4):
        x = keras.layers.Conv2D(filters, 3, strides=2 if strided else 1, padding="same")(x)
        if batch_norm:
            x = BatchNorm(momentum=bn_momentum)(x)
        x = keras.layers.ReLU()(x)
        if not strided:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="conv4")


def mlp(input_dim: int, output_dim: int, *, hidden=(40, 40)) -> keras.Model:
    """The MAML sinusoid network: ``x [batch, input_dim] -> [batch, output_dim]``, ReLU hidden layers."""
    inputs = keras.Input((input_dim,))
    x = inputs
    for width in hidden:
        x = keras.layers.Dense(int(width), activation="relu")(x)
    outputs = keras.layers.Dense(output_dim)(x)
    return keras.Model(inputs, outputs, name="mlp")
