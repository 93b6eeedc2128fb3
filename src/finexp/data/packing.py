"""Packing (``data.packing=true``): several short prompt/response rows in one training sequence, without
cross-attention between them.

Rows are placed into bins of at most ``data.max_length`` tokens (first-fit decreasing, so bins come out nearly
full); a bin is the rows' tokens end to end, with position ids that restart at 0 for every row. A batch of bins is
passed to the model with ``position_ids`` and no 2-D attention mask: transformers then reads the restarts as
sequence boundaries and builds a block-diagonal causal mask (as for ``DataCollatorWithFlattening``), so a token
attends only to earlier tokens of its own row, and a packed row's logits equal the row's logits alone. The loss
is unchanged too: prompt tokens are labelled -100, so the first token of a row is never predicted from the end
of the previous one.

Only the train split is packed; validation and test keep one row per sequence (decoding needs each prompt).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from finexp.data.ner import IGNORE


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Row indices grouped into bins of at most ``capacity`` tokens (first-fit decreasing; deterministic).

    A row longer than ``capacity`` gets a bin of its own (the datamodule already cut rows to ``data.max_length``,
    so this only happens when ``capacity`` is smaller than that).
    """
    if capacity < 1:
        raise ValueError(f"packing capacity must be at least 1 token, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for row in order:
        need = lengths[row]
        for b, space in enumerate(free):
            if need <= space:
                bins[b].append(row)
                free[b] -= need
                break
        else:
            bins.append([row])
            free.append(max(capacity - need, 0))
    for rows in bins:  # rows in their original order inside a bin: the packed sequence reads as the file does
        rows.sort()
    return bins


class PackedDataset(Dataset):
    """The bins of a :class:`~finexp.data.generation.PromptResponseDataset`: one item per bin.

    Each item has the rows' ``input_ids`` and ``labels`` end to end and ``position_ids`` restarting per row;
    ``index`` is the bin's number, ``rows`` the indices of the rows it holds.
    """

    def __init__(self, rows: Dataset, capacity: int) -> None:
        self.rows = rows
        self.capacity = capacity
        self.bins = pack_rows(rows.lengths, capacity)

    @property
    def lengths(self) -> list[int]:
        row_lengths = self.rows.lengths
        return [sum(row_lengths[i] for i in members) for members in self.bins]

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | list[int]]:
        members = [self.rows[i] for i in self.bins[index]]
        return {
            "input_ids": torch.cat([m["input_ids"] for m in members]),
            "labels": torch.cat([m["labels"] for m in members]),
            "position_ids": torch.cat([torch.arange(len(m["input_ids"])) for m in members]),
            "index": index,
            "rows": self.bins[index],
        }

    def statistics(self) -> dict[str, float | int]:
        """What packing did to the train split (``run_info.json``'s ``packing``): rows, bins, how full they are."""
        lengths = self.lengths
        tokens = sum(lengths)
        return {
            "rows": len(self.rows),
            "sequences": len(self.bins),
            "capacity": self.capacity,
            "rows_per_sequence": round(len(self.rows) / max(len(self.bins), 1), 3),
            "fill": round(tokens / max(len(self.bins) * self.capacity, 1), 4),
        }


class PackedCollator:
    """Right-pads bins to the longest in the batch.

    ``position_ids`` continue as one more short "row" over the padding (0, 1, ...), so padding forms a segment
    of its own that no real token attends to; its labels are -100. ``attention_mask`` marks real tokens (for the
    pad-fraction record); the model ignores it when ``position_ids`` are given (see the module docstring).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, bins: list[dict]) -> dict[str, torch.Tensor]:
        longest = max((len(b["input_ids"]) for b in bins), default=1)
        input_ids = torch.full((len(bins), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(bins), longest), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(bins), longest), dtype=torch.long)
        position_ids = torch.arange(longest).repeat(len(bins), 1)
        for i, b in enumerate(bins):
            n = len(b["input_ids"])
            input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = b["input_ids"], b["labels"], 1
            position_ids[i, :n] = b["position_ids"]
            position_ids[i, n:] = torch.arange(longest - n)
        index = torch.tensor([int(b["index"]) for b in bins], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
            "index": index,
        }
