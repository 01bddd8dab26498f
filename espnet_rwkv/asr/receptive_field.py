"""Which input frames each output frame of ESPnet's convolutional subsampling reads.

Streaming (``RWKVEncoder.stream_forward``) returns an encoder frame as soon as
every input frame its subsampling reads has arrived, and keeps only the input
frames that later outputs still read (docs/streaming.md).
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReceptiveField:
    """Output frame t of a subsampling reads input frames ``stride*t - pad ... stride*t - pad + size - 1``.

    ``pad`` frames before the input are zero padding (convolutions) or ignored
    (pooling); so are those past its end.
    """

    stride: int
    pad: int
    size: int

    @property
    def lookahead(self) -> int:
        """Input frames after output t's own ``stride*t ... stride*t + stride - 1`` that it reads."""
        return self.size - self.pad - self.stride


def receptive_field(conv: torch.nn.Sequential) -> ReceptiveField:
    """Compose the time axis (dim 2 of (B, 1, T, F)) of ConvInput's Conv2d / MaxPool2d / ReLU stack.

    ESPnet's conv2d subsampling by 4 (``vgg_like: false``) gives stride 4, pad 0,
    size 7: 3 frames (30 ms) of lookahead. The VGG-like one gives stride 4,
    pad 3, size 16: 9 frames (90 ms).
    """
    stride, pad, size = 1, 0, 1
    for layer in conv:
        if isinstance(layer, torch.nn.ReLU):
            continue
        if not isinstance(layer, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            raise TypeError(f"receptive_field: unsupported subsampling layer {layer}")
        kernel, step, padding, dilation = (
            p if isinstance(p, int) else p[0] for p in (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        )
        if dilation != 1:
            raise TypeError(f"receptive_field: dilated layer {layer}")
        pad += stride * padding
        size += stride * (kernel - 1)
        stride *= step
    return ReceptiveField(stride, pad, size)
