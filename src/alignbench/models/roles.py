"""Model roles: one frozen base with a named LoRA adapter per role, or full copies.

An algorithm declares the roles it needs (``RoleSpec``): causal-LM roles (policy, agents) and scoring
roles (reward model, cost model, critics: an adapter plus a ``ScoreHead``). The reference policy is the
base itself with every adapter switched off, so it costs no memory. ``model.adapters=false`` gives each
role its own full copy instead (the trainable LM role reuses the base object).

Switching adapters is a pointer flip on the cached LoRA layers (no ``requires_grad`` churn), so one
``RoleSet`` can run policy, reference and critics forward passes in any order. Only trainable roles'
weights (adapters, heads) enter checkpoints; the frozen base and frozen roles never do.
"""

from __future__ import annotations

import copy
import re
from functools import partial
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from alignbench.config import ModelConfig
from alignbench.models.compute import METER
from alignbench.models.heads import ScoreHead
from alignbench.models.row_chunks import row_micro_batches
from alignbench.models.sharding import backbone_forward
from alignbench.utils.distributed import full_tensor, is_sharded, local_part

if TYPE_CHECKING:
    from transformers import PreTrainedModel

REFERENCE = "reference"
_PLACEHOLDER = "__role__"


@dataclass(frozen=True)
class RoleSpec:
    """A role an algorithm needs. ``kind``: ``lm`` (generates) or ``score`` (scalar per position)."""

    name: str
    kind: str = "lm"
    trainable: bool = True


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: the first real token of every row is position 0."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class RoleSet(nn.Module):
    """All roles of one run over one base model."""

    def __init__(self, base: PreTrainedModel, specs: list[RoleSpec], cfg: ModelConfig,
                 full_finetune: bool = False) -> None:
        super().__init__()
        self.specs = {spec.name: spec for spec in specs if spec.name != REFERENCE}
        self.use_adapters = cfg.adapters and not full_finetune and bool(self.specs)
        self.full_finetune = full_finetune
        hidden = base.config.hidden_size
        self.heads = nn.ModuleDict({
            name: ScoreHead(hidden) for name, spec in self.specs.items() if spec.kind == "score"
        })
        for name, head in self.heads.items():
            head.requires_grad_(self.specs[name].trainable)
        if self.use_adapters:
            from peft import LoraConfig as PeftLoraConfig  # here: importing peft takes seconds (start-up)
            from peft import get_peft_model
            from peft.tuners.lora import LoraLayer

            base.requires_grad_(False)
            lora = PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                  target_modules=list(cfg.lora.target_modules))
            names = list(self.specs)
            self.peft = get_peft_model(base, lora, adapter_name=names[0])
            for name in names[1:]:
                self.peft.add_adapter(name, lora)
            self._lora_layers = [m for m in self.peft.modules() if isinstance(m, LoraLayer)]
            for pname, param in self.peft.named_parameters():
                role = self._role_of_param(pname)
                param.requires_grad_(role is not None and self.specs[role].trainable)
            self.models = nn.ModuleDict()
        else:
            # Full copies: the first trainable LM role owns the base object; every other role, and the
            # reference, gets a deep copy (this is what the shared-adapter mode saves memory against).
            self.peft = None
            self._lora_layers = []
            models: dict[str, PreTrainedModel] = {}
            owner = next((n for n, s in self.specs.items() if s.kind == "lm" and s.trainable), None)
            for name, spec in self.specs.items():
                models[name] = base if name == owner else copy.deepcopy(base)
                models[name].requires_grad_(spec.trainable)
            self.models = nn.ModuleDict(models)
            if not full_finetune:
                if owner is None:
                    base.requires_grad_(False)
                    self.frozen_base = base  # no trainable LM role: the base itself is the reference
                    self._reference = [base]
                else:
                    reference = copy.deepcopy(base)
                    reference.requires_grad_(False)
                    self.reference_model = reference  # frozen: never in checkpoints (trainable roles only)
                    self._reference = [reference]
        self._active: str | None = None
        self.micro_batch_rows = cfg.micro_batch_rows  # models.row_chunks

    # ----------------------------------------------------------------- adapter switching
    def _role_of_param(self, param_name: str) -> str | None:
        match = re.search(r"\.lora_(?:A|B|embedding_A|embedding_B)\.([^.]+)\.", param_name)
        return match.group(1) if match else None

    @contextmanager
    def use(self, role: str) -> Iterator[PreTrainedModel]:
        """Yield the causal LM that computes ``role`` (adapter switched on, or the role's copy)."""
        if not self.use_adapters:
            if role == REFERENCE:
                yield self._reference[0] if not self.full_finetune else self.models[next(iter(self.models))]
            else:
                yield self.models[role]
            return
        for layer in self._lora_layers:
            layer._active_adapter = [role] if role != REFERENCE else layer._active_adapter
            layer._disable_adapters = role == REFERENCE
        try:
            yield self.peft.base_model.model
        finally:
            for layer in self._lora_layers:
                layer._disable_adapters = False

    @contextmanager
    def generation_model(self, role: str) -> Iterator[PreTrainedModel]:
        """The model to call ``generate`` on for ``role`` (adapter active for the whole block)."""
        with self.use(role) as model:
            yield model

    # ----------------------------------------------------------------- forward passes
    def _switches(self) -> list[tuple[list[str], bool]]:
        """Every LoRA layer's adapter switches (which adapter, or none: the reference)."""
        return [(layer._active_adapter, layer._disable_adapters) for layer in self._lora_layers]

    @contextmanager
    def _switched(self, switches: list[tuple[list[str], bool]]) -> Iterator[None]:
        """The adapter switches ``switches`` (of ``_switches``) for the block, the current ones after it."""
        current = self._switches()
        for layer, (active, disabled) in zip(self._lora_layers, switches):
            layer._active_adapter, layer._disable_adapters = active, disabled
        try:
            yield
        finally:
            for layer, (active, disabled) in zip(self._lora_layers, current):
                layer._active_adapter, layer._disable_adapters = active, disabled

    @contextmanager
    def _checkpointing(self, model: PreTrainedModel) -> Iterator[None]:
        """``model.gradient_checkpointing`` in a pass with grad, also when the model is in eval mode.

        transformers recomputes a decoder layer in backward only while the layer's ``training`` flag is
        set, and a pretrained model loads in eval mode (which here only means: no dropout), so a
        checkpointed SmolLM2 stage would keep every layer's activations. For the pass the flag of each
        decoder layer itself is set (its attention, MLP and LoRA modules keep theirs: dropout does not
        change). The recompute runs under this pass's adapter switches (``context_fn``), whichever role is
        active when backward runs (one backward may follow passes of several roles)."""
        layers = []
        if torch.is_grad_enabled() and getattr(model, "is_gradient_checkpointing", False):
            from transformers.modeling_layers import GradientCheckpointingLayer

            layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        switches = self._switches()
        saved = [(layer, layer.training, layer._gradient_checkpointing_func) for layer in layers]
        for layer, _, func in saved:
            layer.training = True
            layer._gradient_checkpointing_func = partial(
                func, context_fn=lambda: (nullcontext(), self._switched(switches)))
        try:
            yield
        finally:
            for layer, training, func in saved:
                layer.training, layer._gradient_checkpointing_func = training, func

    def _pass(self, model: PreTrainedModel, forward, input_ids: torch.Tensor,
              attention_mask: torch.Tensor) -> torch.Tensor:
        """``forward(ids, mask, positions)`` of ``model`` in row micro-batches of ``model.micro_batch_rows``
        (``models.row_chunks``: per-row results are the whole pass's; with grad, each chunk runs again in
        backward under this pass's adapter switches and layer checkpointing). FSDP-sharded: one pass."""
        rows = 0 if is_sharded(model) else self.micro_batch_rows
        switches = self._switches()

        @contextmanager
        def as_in_this_pass() -> Iterator[None]:
            with self._switched(switches), self._checkpointing(model):
                yield

        return row_micro_batches(forward, (input_ids, attention_mask, position_ids_from_mask(attention_mask)),
                                 rows, as_in_this_pass)

    def lm_logits(self, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """The causal LM's logits ``[B, L, V]``; with ``rows`` (bool ``[B, L]``) only those positions go
        through the LM head, ``[N, V]`` in row-major order, each row the full pass's (the head's product
        is row-wise): a loss over a few positions never holds ``[B, L, V]`` (49k columns on a real model)."""
        with self.use(role) as model:
            head = model.get_output_embeddings()
            config = getattr(model, "config", None)
            # a head that is more than one linear layer (Gemma 2's soft-capping, Cohere's logit scale), or
            # FSDP-sharded (the root's forward gathers its weight): the whole pass
            plain_head = isinstance(head, nn.Linear) and not getattr(config, "final_logit_softcapping", None) \
                and not getattr(config, "logit_scale", None) and not is_sharded(model)
            if rows is None or not plain_head:
                METER.forward(model, attention_mask, logit_positions=attention_mask.sum())
                logits = self._pass(model, lambda ids, mask, pos: model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits,
                    input_ids, attention_mask)
                return logits if rows is None else logits[rows]
            METER.forward(model, attention_mask, logit_positions=rows.sum())
            hidden = self._pass(model, self._backbone(model), input_ids, attention_mask)
            return head(hidden[rows])

    @staticmethod
    def _backbone(model: PreTrainedModel):
        """``(ids, mask, positions) -> [B, L, H]``: the backbone's hidden states (no LM head)."""
        backbone = backbone_forward(model)
        return lambda ids, mask, pos: backbone(input_ids=ids, attention_mask=mask, position_ids=pos,
                                               use_cache=False).last_hidden_state

    def scores(self, role: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-position scalar ``[B, L]`` of a score role (backbone hidden states -> its head)."""
        with self.use(role) as model:
            METER.forward(model, attention_mask)
            hidden = self._pass(model, self._backbone(model), input_ids, attention_mask)
        return self.heads[role](hidden)

    # ----------------------------------------------------------------- parameters and state
    def parameters_of(self, role: str) -> list[nn.Parameter]:
        """Trainable parameters of one role (its adapter or copy, plus its head)."""
        if self.use_adapters:
            params = [p for n, p in self.peft.named_parameters() if self._role_of_param(n) == role]
        else:
            params = list(self.models[role].parameters())
        if role in self.heads:
            params += list(self.heads[role].parameters())
        return [p for p in params if p.requires_grad]

    def role_state_dict(self, role: str) -> dict[str, torch.Tensor]:
        """A role's own weights with role-independent keys, so a critic can load a reward model's.

        Whole tensors also under FSDP (gathering them is a collective: every rank calls this)."""
        state: dict[str, torch.Tensor] = {}
        if self.use_adapters:
            for name, param in self.peft.named_parameters():
                if self._role_of_param(name) == role:
                    state["adapter." + name.replace(f".{role}.", f".{_PLACEHOLDER}.")] = _whole(param)
        else:
            for name, tensor in self.models[role].state_dict().items():
                state["model." + name] = _whole(tensor)
        if role in self.heads:
            for name, tensor in self.heads[role].state_dict().items():
                state["head." + name] = _whole(tensor)
        return state

    def load_role_state_dict(self, role: str, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``role_state_dict``; raises on missing or unexpected keys."""
        expected = set(self.role_state_dict(role))
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise KeyError(f"role '{role}' state mismatch: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            if self.use_adapters:
                params = dict(self.peft.named_parameters())
                for key, tensor in state.items():
                    if key.startswith("adapter."):
                        name = key[len("adapter."):].replace(f".{_PLACEHOLDER}.", f".{role}.")
                        params[name].copy_(local_part(tensor, params[name]))
            else:
                _load_whole(self.models[role], {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
            if role in self.heads:
                _load_whole(self.heads[role], {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})

    def trainable_roles(self) -> list[str]:
        return [name for name, spec in self.specs.items() if spec.trainable]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of trainable roles only: what a checkpoint stores (no frozen base, no frozen role)."""
        state = {}
        for role in self.trainable_roles():
            for key, tensor in self.role_state_dict(role).items():
                state[f"{role}/{key}"] = tensor
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for role in self.trainable_roles():
            prefix = f"{role}/"
            self.load_role_state_dict(role, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def merged_base_state_dict(self) -> dict[str, torch.Tensor]:
        """Full-finetune stages: the (only) model's weights, to become the next stages' base."""
        return {k: _whole(v) for k, v in self.models[next(iter(self.models))].state_dict().items()}


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``tensor``, whole when it is an FSDP shard."""
    return full_tensor(tensor.detach()).detach().clone()


def _load_whole(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state)`` for whole tensors, also into FSDP-sharded parameters."""
    current = module.state_dict()
    module.load_state_dict({key: local_part(value, current[key]) if key in current else value
                            for key, value in state.items()})
