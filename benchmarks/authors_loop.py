"""The plain loop the job is measured against: the Zero-DCE authors' network, one image at a time.

As their test script does it: fp32, NCHW, one image per forward pass, the model loaded once;
Pillow decodes, the output is written in the input's format (PNG for others) by Pillow. The
network is their ``enhance_net_nopool`` (same layers and curve arithmetic), with their published
checkpoint when ``../shared`` has it, else this project's shipped weights (same architecture).
Torch uses every core (its default). Prints one JSON line: images, seconds (model loaded to last
image written) and the process's own start-to-end seconds.

    python benchmarks/authors_loop.py IN_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time

PROCESS_START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from PIL import Image  # noqa: E402


class EnhanceNetNoPool(nn.Module):
    """The authors' DCE-Net: seven 3x3 convolutions, symmetric skips, 8 curve iterations."""

    def __init__(self) -> None:
        super().__init__()
        n = 32
        self.relu = nn.ReLU(inplace=True)
        self.e_conv1 = nn.Conv2d(3, n, 3, 1, 1)
        self.e_conv2 = nn.Conv2d(n, n, 3, 1, 1)
        self.e_conv3 = nn.Conv2d(n, n, 3, 1, 1)
        self.e_conv4 = nn.Conv2d(n, n, 3, 1, 1)
        self.e_conv5 = nn.Conv2d(2 * n, n, 3, 1, 1)
        self.e_conv6 = nn.Conv2d(2 * n, n, 3, 1, 1)
        self.e_conv7 = nn.Conv2d(2 * n, 24, 3, 1, 1)

    def forward(self, x):
        x1 = self.relu(self.e_conv1(x))
        x2 = self.relu(self.e_conv2(x1))
        x3 = self.relu(self.e_conv3(x2))
        x4 = self.relu(self.e_conv4(x3))
        x5 = self.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = self.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        x_r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
        for r in torch.split(x_r, 3, dim=1):
            x = x + r * (torch.pow(x, 2) - x)
        return x


def load_state() -> tuple[dict, str]:
    published = os.path.join(os.environ.get("DCE_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")),
                             "reference_weights", "zero_dce_epoch99.pth")
    if os.path.isfile(published):
        return torch.load(published, map_location="cpu", weights_only=True), "the authors' Epoch99.pth"
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from dce_batch.enhance.weights import load_weights

    return dict(load_weights("zerodce_sice_v1").state_dict), "zerodce_sice_v1 (../shared absent)"


def main() -> int:
    source, target = sys.argv[1], sys.argv[2]
    os.makedirs(target, exist_ok=True)
    net = EnhanceNetNoPool()
    state, origin = load_state()
    net.load_state_dict(state)
    net.eval()
    files = sorted(f for f in os.listdir(source) if not f.startswith("."))
    started = time.time()
    with torch.no_grad():
        for name in files:
            image = Image.open(os.path.join(source, name))
            fmt = image.format if image.format in ("JPEG", "PNG", "BMP", "TIFF", "WEBP") else "PNG"
            x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
            y = net(x)
            out = (y.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            Image.fromarray(out).save(os.path.join(target, name), fmt)
    done = time.time()
    print(json.dumps({"images": len(files), "seconds": done - started, "process_seconds": done - PROCESS_START,
                      "weights": origin, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
