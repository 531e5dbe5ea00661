"""nn: the small kit under models and training — encode, collate, the loss, the loop.

One prompt template and encoder (:mod:`harp.nn.encode`), one loss
(:mod:`harp.nn.loss`), one training loop with a single-step API
(:mod:`harp.nn.loop`), and several LoRA adapters trained in one batched forward
(:mod:`harp.nn.stacked`). Tensors are created on the device of the model that reads
them. torch is imported inside functions only.
"""

from harp.nn.encode import (
    IGNORE_INDEX,
    RESPONSE_MARKER,
    EncodedRows,
    collate,
    encode_examples,
    encode_texts,
    fit_max_length,
    format_example,
    format_prompt,
    length_batches,
    model_device,
    model_max_length,
    pad_token_id,
    seeded,
)
from harp.nn.loop import (
    LR_SCHEDULES,
    StackedRun,
    Trainer,
    TrainStep,
    batch_stream,
    is_out_of_memory,
    stack_schedule,
    train_loop,
    train_stacked,
)
from harp.nn.loss import (
    TokenLosses,
    causal_lm_loss,
    forward_losses,
    output_positions,
    row_losses,
    token_losses,
)
from harp.nn.stacked import StackedAdapters

__all__ = [
    "EncodedRows",
    "IGNORE_INDEX",
    "LR_SCHEDULES",
    "RESPONSE_MARKER",
    "StackedAdapters",
    "StackedRun",
    "TokenLosses",
    "TrainStep",
    "Trainer",
    "batch_stream",
    "causal_lm_loss",
    "collate",
    "encode_examples",
    "encode_texts",
    "fit_max_length",
    "format_example",
    "format_prompt",
    "forward_losses",
    "is_out_of_memory",
    "length_batches",
    "model_device",
    "model_max_length",
    "output_positions",
    "pad_token_id",
    "row_losses",
    "seeded",
    "stack_schedule",
    "token_losses",
    "train_loop",
    "train_stacked",
]
