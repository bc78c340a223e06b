"""Draw the figures of docs/ from the code itself: `python docs/figures.py` writes docs/attention_mask.png.

The mask is the one the prior trains with (latentbridge.prior.block_causal_mask over the metadata that
latentbridge.sequence.pack builds), for two examples packed into one row in the two-copy layout: a caption
(one cond block) followed by an image target of two blocks, and a text continuation of two target blocks.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from latentbridge.prior import block_causal_mask  # noqa: E402
from latentbridge.sequence import Segment, SequenceLayout, Stream, pack  # noqa: E402


def mask_figure(path: Path) -> Path:
    layout = SequenceLayout({"caption": Stream(dim=2, block_size=2), "image": Stream(dim=2, block_size=3)})
    first = [Segment("caption", torch.zeros(2, 2), "cond"), Segment("image", torch.zeros(6, 2), "target")]
    second = [Segment("caption", torch.zeros(4, 2), "target")]
    packed = pack([first, second], layout, two_copies=True, row_length=64, unread_clean=False)
    meta = packed.meta
    mask = block_causal_mask(meta, meta)[0]  # [L, L]
    keep = meta.sample[0] >= 0
    mask = mask[keep][:, keep].float()
    labels = [f"{'n' if n else 'c'}{int(s)}.{int(b)}" for s, b, n in zip(meta.sample[0][keep], meta.block[0][keep], meta.noisy[0][keep])]
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="key (c = clean, n = noisy; sample.block)", ylabel="query",
           title="two-copy block-causal mask: black = may attend\n(the last target block's clean copy is left out: nothing reads it)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(mask_figure(Path(__file__).parent / "attention_mask.png"))
