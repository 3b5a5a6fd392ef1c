"""The classifier kitae trains: a Hugging Face `*ForSequenceClassification` model (so its weights
and head live under the standard names and an export loads in plain transformers and vLLM),
optionally wrapped by PEFT, run with padding-safe pooling.

- `last` (decoders): the backbone's hidden state at the last real token, through the model's own
  head (`score`). Equal to transformers' own pooling, but from explicit positions, and with
  position ids counted over real tokens so left padding gives the same logits as right padding.
- `cls` (encoders): the model's own forward (its pooler and classifier), unchanged.
- `mean`: the mean of real tokens' hidden states, through the model's head.

Packed batches (several sequences per row, `kitae.data.batching.collate_packed`) pool each
sequence at its own last token (or over its own tokens); no token attends across sequences:
decoders get position ids that restart per sequence and no mask (transformers then builds the
block-diagonal causal mask, and flash-attention reads the restarts as varlen boundaries),
encoders get a block-diagonal mask. Whether a model computes packed rows exactly as unpacked ones
is checked once when it is built (`choose_packing`), not assumed.

The head always computes in float32 (`keep_float32`), under autocast too: its weights are the
master weights the optimizer updates, and the logits feed the loss and the probabilities.
"""

from __future__ import annotations

import inspect
import threading

import torch
from torch import nn
from transformers import PreTrainedModel

from kitae.models.pooling import (
    block_attention_mask,
    gather_positions,
    mean_pool,
    position_ids_from_mask,
    segment_mean_pool,
)

HEAD_NAMES = ("score", "classifier")


def keep_float32(module: nn.Module) -> None:
    """Make `module` float32 and run it in float32 whatever autocast is on around it: its
    floating inputs are cast to float32 and autocast is off inside its forward (hooks, so the
    module and its weight names stay as they are; the exit hook runs even when the forward
    raises). Idempotent. A quantized head (integer weights) is left as it is."""
    if any(not p.is_floating_point() for p in module.parameters()):
        return
    module.float()
    if getattr(module, "_kitae_float32", False):
        return
    module._kitae_float32 = True  # type: ignore[assignment]
    module.register_forward_pre_hook(_enter_float32)
    module.register_forward_hook(_exit_float32, always_call=True)


# The autocast-off contexts entered by `keep_float32`'s hooks, per thread (autocast state is
# per thread; hooks nest, so a stack): a module may be called from several threads at once.
_AUTOCAST_OFF = threading.local()


def _enter_float32(module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    context = torch.autocast(tensors[0].device.type if tensors else "cpu", enabled=False)
    context.__enter__()
    _AUTOCAST_OFF.__dict__.setdefault("stack", []).append(context)
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _exit_float32(module: nn.Module, args: tuple[object, ...], output: object) -> None:
    _AUTOCAST_OFF.stack.pop().__exit__(None, None, None)


def find_head_name(model: PreTrainedModel) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")


class SequenceClassifier(nn.Module):
    def __init__(self, model: nn.Module, hf_model: PreTrainedModel, pooling: str, is_decoder: bool) -> None:
        """`model` is what trains (a PeftModel or `hf_model` itself); `hf_model` is the
        underlying transformers model, which PEFT modifies in place."""
        super().__init__()
        self.model = model
        self.hf_model = hf_model
        self.pooling = pooling
        self.is_decoder = is_decoder
        self.head_name = find_head_name(hf_model)
        keep_float32(self.head)
        backbone = getattr(hf_model, hf_model.base_model_prefix)
        self._backbone_takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters
        # How packed rows are fed to this model ("positions" for decoders, a mask form for
        # encoders), or None: batches are padded. Set by `choose_packing`.
        self.packing: str | None = None

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.hf_model, self.hf_model.base_model_prefix)

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The transformer block classes: FSDP's auto-wrap policy reads them from the model it wraps."""
        return getattr(self.hf_model, "_no_split_modules", None)

    @property
    def head(self) -> nn.Module:
        return getattr(self.hf_model, self.head_name)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pool_positions: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, pool_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (sequences, num_labels): one row per batch row, or per packed sequence when
        `segment_ids` is given (a `collate_packed` batch)."""
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if segment_ids is not None:
            assert pool_rows is not None and pool_positions is not None and position_ids is not None
            return self._packed_forward(input_ids, position_ids, segment_ids, pool_rows, pool_positions,
                                        self.packing or "positions", kwargs)
        if self.pooling == "cls":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        if self.is_decoder and self._backbone_takes_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               **kwargs).last_hidden_state
        if self.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        else:
            if pool_positions is None:
                from kitae.models.pooling import last_token_positions

                pool_positions = last_token_positions(attention_mask)
            pooled = gather_positions(hidden, pool_positions)
        # The head is applied to one vector per text (transformers applies it to every position
        # and then gathers: same numbers, seq_len times the work).
        return self.head(pooled.to(self._head_dtype()))

    def _packed_forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, segment_ids: torch.Tensor,
                        pool_rows: torch.Tensor, pool_positions: torch.Tensor, form: str,
                        kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._backbone_takes_positions:
            kwargs["position_ids"] = position_ids
        if form != "positions":
            kwargs["attention_mask"] = block_attention_mask(segment_ids, form, self._weights_dtype())
        hidden = self.backbone(input_ids=input_ids, use_cache=False, **kwargs).last_hidden_state
        if self.pooling == "mean":
            pooled = segment_mean_pool(hidden, segment_ids, len(pool_rows))
        else:
            pooled = hidden[pool_rows, pool_positions]
        return self.head(pooled.to(self._head_dtype()))

    def _head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def _weights_dtype(self) -> torch.dtype:
        """The backbone's dtype (the head's is float32 whatever the backbone's)."""
        return next(p.dtype for p in self.backbone.parameters() if p.is_floating_point())


# The inputs a packed-vs-unpacked check may feed (decoders read restarting positions with no
# mask; encoders a block mask in the form their attention code reads).
DECODER_PACKING_FORMS = ("positions",)
# (DeBERTa-v2 multiplies its embeddings by the mask, so it reads no block mask: it fails the check.)
ENCODER_PACKING_FORMS = ("bool4d", "additive4d")


def choose_packing(classifier: SequenceClassifier, requested: bool | str) -> tuple[str | None, str]:
    """Decide whether `classifier` runs packed batches: (the packing form, or None; why).

    `requested` is training.packing: False → off; "auto" → on if the model passes the check;
    True → on, or a ValueError naming why it cannot be. The check runs three short sequences
    packed (two sharing a row) and each alone, in eval mode without gradients, and keeps the first input
    form whose pooled states agree (float32: within 1e-4 of the largest value; half precision
    2e-2): it catches a model whose attention ignores restarting positions, or reads a mask
    differently, instead of trusting a list of architectures."""
    if requested is False:
        return None, "off (training.packing: false)"
    if classifier.pooling == "cls":
        reason = ("pooling cls runs the model's own pooler and head on the first token of each row, which "
                  "packed rows do not have; use model.pooling: mean, or training.packing: false")
        if requested is True:
            raise ValueError(f"training.packing: {reason}")
        return None, f"off ({reason})"
    forms = DECODER_PACKING_FORMS if classifier.is_decoder else ENCODER_PACKING_FORMS
    form = _first_exact_form(classifier, forms)
    if form is None:
        reason = (f"{type(classifier.hf_model).__name__} does not compute packed rows exactly as padded ones "
                  "(checked at load)")
        if requested is True:
            raise ValueError(f"training.packing: {reason}; set training.packing: false")
        return None, f"off ({reason})"
    return form, "on (packed logits checked equal to unpacked at load)"


@torch.no_grad()
def _first_exact_form(classifier: SequenceClassifier, forms: tuple[str, ...]) -> str | None:
    from kitae.data.batching import collate_packed

    config = classifier.hf_model.config
    vocab = int(getattr(config, "vocab_size", None) or 100)
    # Fixed ids (no RNG drawn: a seeded run stays reproducible), avoiding the first ids, which
    # are often special tokens.
    # Lengths 6, 3, 2: packed into rows of 6, the 3 and the 2 share the second row.
    sequences = [[3 + (7 * i + 5) % max(vocab - 4, 1) for i in range(n, n + length)]
                 for n, length in ((0, 6), (11, 3), (17, 2))]
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        alone = torch.cat([
            _pooled(classifier, {"input_ids": torch.tensor([ids], device=device),
                                 "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device)})
            for ids in sequences])
        packed_inputs = {k: v.to(device) for k, v in collate_packed(sequences, 0).items()}
        tolerance = 1e-4 if classifier._weights_dtype() == torch.float32 else 2e-2
        scale = float(alone.abs().max()) or 1.0
        for form in forms:
            classifier.packing = form
            try:
                packed = _pooled(classifier, packed_inputs)
            except Exception:  # an attention implementation that refuses this input form
                continue
            if packed.shape == alone.shape and float((packed - alone).abs().max()) <= tolerance * scale:
                return form
        return None
    finally:
        classifier.packing = None
        classifier.train(was_training)


def _pooled(classifier: SequenceClassifier, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pooled vectors the head would see (the check compares these, not the logits of a
    random head)."""
    captured: list[torch.Tensor] = []
    handle = classifier.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float()))
    try:
        classifier(**inputs)
    finally:
        handle.remove()
    return captured[0]
