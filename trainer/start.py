"""How a run starts: the encoder from a published model (warm start), the memory bank from the network's features.

The paper starts the bank from random unit vectors; every entry then needs about four visits (momentum 0.5)
before it says anything about its image, which is most of a few-epoch CPU budget. Filling the bank with
the network's own embeddings of every image before the first step makes the first step's targets
meaningful: a random conv net already groups images somewhat (docs/cpu-recipe.md measures both).
With `init_model` (warm start from the live version) the same fill gives the bank the live embeddings of
the current collection, new images included.
"""

from __future__ import annotations

import logging

import torch

from .embed import load_model_and_config
from .feed import DeviceFeed, LoaderFeed
from .model import Encoder
from .preprocess import Preprocess
from .progress import Tick

log = logging.getLogger(__name__)


def load_initial_weights(encoder: Encoder, path: str, arch: str, dim: int, width: int) -> None:
    """Copy a saved model's weights into `encoder`; the architectures must match."""
    saved, saved_cfg = load_model_and_config(path)
    mine = {"arch": arch, "dim": dim, "width": width}
    theirs = {k: saved_cfg.get(k, 64 if k == "width" else None) for k in mine}
    if mine != theirs:
        raise ValueError(f"cannot start from {path}: it is {theirs}, this run is {mine}")
    encoder.load_state_dict(saved.state_dict())
    log.info("encoder initialised from %s", path)


@torch.no_grad()
def features_of_collection(encoder: Encoder, feed: DeviceFeed | LoaderFeed, pre: Preprocess, device,
                           batch_size: int = 256, tick: Tick | None = None) -> torch.Tensor:
    """Every image's embedding with the eval transform -> N x D unit rows, in collection order.

    The network runs in training mode (batch statistics), as in the steps whose targets these rows become;
    no gradient, so only the BN running statistics move. Eval-mode rows group images better at random init
    (kNN 28.2% vs 21.7%) but, as targets of batch-statistics features, train worse: 23.1% vs 26.3% kNN
    after the same budget (docs/cpu-recipe.md).
    """
    encoder.train()
    tick = tick or (lambda done, total: None)
    out = []
    if isinstance(feed, DeviceFeed):
        n = len(feed.host)  # N x S x S x 3 uint8: the arrays, or the image cache's squares
        for i in range(0, n, batch_size):
            out.append(encoder(pre.device_eval(feed.gather(torch.arange(i, min(i + batch_size, n))))))  # b x D
            tick(min(i + batch_size, n), n)
        return torch.cat(out)
    saved, feed.ds.transform = feed.ds.transform, pre.eval_transform()
    try:
        loader = torch.utils.data.DataLoader(feed.ds, batch_size=batch_size, num_workers=feed.workers)
        for x, _ in loader:
            out.append(encoder(x.to(device)))  # b x D
            tick(sum(len(f) for f in out), len(feed.ds))
        return torch.cat(out)  # N x D
    finally:
        feed.ds.transform = saved
