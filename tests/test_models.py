"""conv4's convolution forms: patches times a matrix computes what Keras's Conv2D computes."""

import numpy as np
import pytest

import keras

from metabench.algorithms.models import MatmulConv2D, conv4


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2, 3, (2, 1)])
@pytest.mark.parametrize("kernel_size", [1, 3, (5, 3)])
def test_matmul_conv_equals_keras_conv2d(padding, strides, kernel_size):
    x = np.random.default_rng(0).normal(size=(2, 11, 9, 3)).astype(np.float32)
    native = keras.layers.Conv2D(4, kernel_size, strides=strides, padding=padding)
    matmul = MatmulConv2D(4, kernel_size, strides=strides, padding=padding)
    expected = native(x)
    matmul.build(x.shape)
    matmul.set_weights(native.get_weights())
    got = matmul(x)
    assert tuple(got.shape) == tuple(expected.shape)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_conv4_with_matmul_convolutions_keeps_the_weights_and_the_outputs():
    native = conv4((28, 28, 1), 5, filters=8)
    matmul = conv4((28, 28, 1), 5, filters=8, conv="matmul")
    assert [tuple(w.shape) for w in matmul.weights] == [tuple(w.shape) for w in native.weights]
    matmul.set_weights(native.get_weights())
    x = np.random.default_rng(1).random((6, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(matmul(x, training=True)), np.asarray(native(x, training=True)), rtol=1e-4, atol=1e-5)


def test_unsupported_forms_are_refused_by_name():
    with pytest.raises(ValueError, match=r"Received conv='im2col'; expected one of \['matmul', 'native'\]"):
        conv4((28, 28, 1), 5, conv="im2col")
    with pytest.raises(ValueError, match=r"MatmulConv2D takes channels_last inputs without dilation or groups; .*dilation_rate=\(2, 2\)"):
        MatmulConv2D(4, 3, dilation_rate=2)
