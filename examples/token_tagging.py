"""Token tagging with a ranking loss: rare entity tags against a dominant background tag.

A synthetic sequence-tagging task: random token ids, where a "name" token right after a
"trigger" token is an entity (``PER``, ``LOC`` or the rarer ``ORG``), and everything else,
the same name tokens elsewhere included, is the background tag ``O`` (about 95 % of the real
tokens). The annotation is noisy: one entity in ten is missed (tagged ``O``) and one in ten
gets a random entity tag. Sequences have random lengths and are padded to a common length. A small model
(embedding + two 1-D convolutions) is trained with :class:`~imbalanced_losses.SmoothAPLoss`:

- ``[B, T, C]`` logits are flattened to ``[B*T, C]`` rows and the ``[B, T]`` tags to ``[B*T]``;
- padding positions carry ``ignore_index=-100``;
- ``class_weight`` is 0 on the background column: ``O`` is not ranked (nor computed);
- the memory queue is sized in *real* tokens. Padding rows passed to the loss still take
  queue slots (the queue stores every row of a batch and skips ``ignore_index`` rows when it
  pools them), so the script drops them before the loss by default (``--padding drop``); with
  ``--padding keep`` it passes them and enlarges the queue by ``1 / (1 - padding fraction)``.

The held-out set is scored per tag with :func:`imbalanced_losses.metrics.average_precision`,
on the raw logit column of each tag (the score the loss ranked), next to a softmax over all
columns (which mixes in the untrained background column) and to the rule that generated the
tags (about the best AP the noisy annotation allows).

Run::

    python examples/token_tagging.py                  # ~40 s on one CPU thread
    python examples/token_tagging.py --quick          # ~5 s
    python examples/token_tagging.py --padding keep   # pass the padding, enlarge the queue
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from imbalanced_losses import SmoothAPLoss
from imbalanced_losses.metrics import average_precision

TAGS = ["O", "PER", "LOC", "ORG"]  # tag 0 is the background
PAD_ID, IGNORE = 0, -100
VOCAB = 64
TRIGGERS = {1: 1, 2: 2, 3: 3}  # token id -> the tag of a name token right after it
NAMES = range(4, 20)  # token ids that are entities after a trigger, background elsewhere
PLANT_RATE = {1: 0.03, 2: 0.02, 3: 0.006}  # per position: a trigger + name pair of each tag


def make_data(n: int, max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[n, max_len]`` (0 = padding) and tags ``[n, max_len]`` (-100 on padding).

    A name token right after the trigger of a tag is tagged with it, except that the
    annotation is noisy: one entity in ten is missed (``O``), one in ten gets a random entity tag.
    """
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB, (n, max_len), generator=g)  # no trigger, except planted ones
    tags = torch.zeros(n, max_len, dtype=torch.long)
    for trigger, rate in PLANT_RATE.items():
        rows, cols = (torch.rand(n, max_len - 1, generator=g) < rate).nonzero().unbind(1)
        tokens[rows, cols] = trigger
        tokens[rows, cols + 1] = torch.randint(NAMES.start, NAMES.stop, (len(rows),), generator=g)
        tag = torch.full((len(rows),), TRIGGERS[trigger])
        noise = torch.rand(len(rows), generator=g)
        tag[noise < 0.2] = torch.randint(1, len(TAGS), (len(rows),), generator=g)[noise < 0.2]
        tag[noise < 0.1] = 0
        tags[rows, cols + 1] = tag
    tags[tokens < NAMES.start] = 0  # a trigger overwritten by the next planted pair
    lengths = torch.randint(max_len // 4, max_len + 1, (n,), generator=g)
    padding = torch.arange(max_len).unsqueeze(0) >= lengths.unsqueeze(1)
    tokens[padding] = PAD_ID
    tags[padding] = IGNORE
    return tokens, tags


class Tagger(nn.Module):
    """Embedding + two 1-D convolutions: ``[B, T]`` token ids -> ``[B, T, C]`` logits."""

    def __init__(self, num_tags: int, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD_ID)
        self.conv = nn.Conv1d(dim, 64, kernel_size=3, padding=1)  # sees the previous token
        self.out = nn.Conv1d(64, num_tags, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).transpose(1, 2)  # [B, dim, T]
        return self.out(torch.relu(self.conv(h))).transpose(1, 2)  # [B, T, C]


def rule_scores(tokens: torch.Tensor) -> torch.Tensor:
    """``[B*T, C]`` scores of the rule that generated the tags, before the annotation noise."""
    prev = torch.cat([torch.full_like(tokens[:, :1], PAD_ID), tokens[:, :-1]], 1)
    is_name = (tokens >= NAMES.start) & (tokens < NAMES.stop)
    after_trigger = is_name & (prev >= 1) & (prev <= len(TRIGGERS))
    scores = torch.zeros(*tokens.shape, len(TAGS))
    for trigger, tag in TRIGGERS.items():
        scores[..., tag] = after_trigger.float() + (after_trigger & (prev == trigger)).float()
    return scores.reshape(-1, len(TAGS))


def queue_size_for(tags: torch.Tensor, positives_wanted: int, padding: str) -> int:
    """Queue rows holding about ``positives_wanted`` positives of the rarest tag."""
    real = tags != IGNORE
    rate = min(float((tags[real] == t).float().mean()) for t in range(1, len(TAGS)))
    real_tokens = positives_wanted / rate  # real tokens the pool needs
    pad_fraction = 1.0 - float(real.float().mean())
    if padding == "keep":  # padding rows take slots too
        real_tokens /= 1.0 - pad_fraction
    return math.ceil(real_tokens / 256.0) * 256


def flat(logits: torch.Tensor, tags: torch.Tensor, padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, C]``, ``[B, T]`` -> ``[B*T, C]``, ``[B*T]`` rows; without the padding rows for ``'drop'``."""
    logits, tags = logits.reshape(-1, logits.shape[-1]), tags.reshape(-1)
    if padding == "drop":
        keep = tags != IGNORE
        logits, tags = logits[keep], tags[keep]
    return logits, tags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller data set and fewer epochs")
    parser.add_argument("--padding", choices=["drop", "keep"], default="drop", help="padding rows into the loss?")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small tensors: one thread is as fast, and immune to a busy machine
    start = time.perf_counter()

    n_train, epochs = (1500, 4) if args.quick else (6000, 8)
    max_len, batch = 48, 32
    tokens, tags = make_data(n_train, max_len, args.seed)
    val_tokens, val_tags = make_data(n_train // 2, max_len, args.seed + 1)
    real = tags != IGNORE
    counts = torch.bincount(tags[real], minlength=len(TAGS))
    pad_fraction = 1.0 - float(real.float().mean())
    print(f"{int(real.sum())} real training tokens, {pad_fraction:.0%} of the positions are padding")
    shares = (counts.double() / real.sum()).tolist()
    print("tag shares: " + ", ".join(f"{tag} {share:.2%}" for tag, share in zip(TAGS, shares, strict=True)))

    queue_size = queue_size_for(tags, positives_wanted=30, padding=args.padding)
    print(f"padding {args.padding}: queue_size={queue_size} for ~30 {TAGS[-1]} positives in the pool")
    loss_fn = SmoothAPLoss(
        num_classes=len(TAGS),
        queue_size=queue_size,
        temperature=0.05,
        class_weight=[0.0, 1.0, 1.0, 1.0],  # background O: not ranked, not computed
    )
    model = Tagger(len(TAGS))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(epochs):
        model.train()
        loss_fn.train()
        for idx in torch.randperm(n_train, generator=g).split(batch):
            logits, targets = flat(model(tokens[idx]), tags[idx], args.padding)
            loss, stats = loss_fn(logits, targets, return_diagnostics=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
        fill = int(stats["queue_fill"][1])
        pos = ", ".join(f"{TAGS[t]} {int(stats['pos_count'][t])}" for t in range(1, len(TAGS)))
        print(f"epoch {epoch}: loss {loss.item():.3f}; real rows from the queue {fill}/{queue_size}; positives {pos}")

    model.eval()
    with torch.no_grad():
        logits, targets = flat(model(val_tokens), val_tags, "keep")  # the metrics skip -100 rows
    by_logit = average_precision(logits, targets)  # [C]; the score the loss ranked
    by_softmax = average_precision(logits.softmax(1), targets)  # mixes in the untrained O column
    ceiling = average_precision(rule_scores(val_tokens), targets)  # about the best the noisy tags allow
    print(f"{'tag':<5} {'positives':>9} {'AP (logit)':>11} {'AP (softmax)':>13} {'AP (rule)':>10}")
    for t in range(1, len(TAGS)):
        n_pos = int((targets == t).sum())
        row = f"{by_logit[t].item():>11.3f} {by_softmax[t].item():>13.3f} {ceiling[t].item():>10.3f}"
        print(f"{TAGS[t]:<5} {n_pos:>9} {row}")
    print(f"mean AP over the entity tags: {by_logit[1:].mean().item():.3f} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
