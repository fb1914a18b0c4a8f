"""FSDP2 over a ``RoleSet`` (``trainer=fsdp``): the shared base, its LoRA adapters and the score heads
sharded across the ranks of a data-parallel mesh.

``shard_roles(roles, mesh)`` calls ``torch.distributed.fsdp.fully_shard`` bottom-up on every model the
roles hold (the one peft base, or each full copy):

* each decoder layer (the classes transformers lists in ``model._no_split_modules``) is one group:
  its weights and the LoRA adapters inside it (FSDP2 keeps frozen and trainable parameters in one
  group) are all-gathered just before the layer runs and freed after it; its gradients are
  reduce-scattered after its backward;
* the model's root holds the rest (embeddings, final norm, LM head; tied weights stay tied);
* each ``ScoreHead`` is a group of its own.

With N ranks a rank holds 1/N of every parameter, gradient and AdamW state, plus one layer gathered
at a time (``benchmarks/fsdp_memory.py`` measures it). Every forward is a collective, so all ranks
must run the same sequence of forwards: rollouts stop when every rank's rows have finished
(``alignbench.rl.rollout``), scoring uses the model's plain forward (the fused CPU passes, packed
scoring and the shared-prompt pass refuse sharded models: they read weights directly or choose their
forwards from the local batch), and under FSDP every rank runs the evaluation (rank 0 writes it).
``RoleSet.scores`` runs the backbone without the LM head; ``backbone_forward`` makes that call go
through the root's FSDP hooks.

``unshard_roles(roles)`` is the inverse: every parameter whole again on every rank, FSDP's hooks and
state removed, the modules' classes restored. The pipeline calls it when a stage ends, so adapters can
be unloaded, the SFT model merged into the base and the next stage sharded afresh. It relies on
FSDP2's internals as of torch 2.13 (pinned exactly in pyproject.toml); ``tests/test_fsdp.py`` checks
that a released model computes what the sharded one did and can be sharded again.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

BACKBONE_METHOD = "alignbench_backbone"


def _models(module: nn.Module) -> Iterator[PreTrainedModel]:
    """The outermost transformers models under ``module`` (each once, in module order)."""
    from transformers import PreTrainedModel  # here: importing it takes seconds (start-up)

    seen: set[int] = set()

    def walk(node: nn.Module) -> Iterator[PreTrainedModel]:
        for child in node.children():
            if isinstance(child, PreTrainedModel):
                if id(child) not in seen:
                    seen.add(id(child))
                    yield child
            else:
                yield from walk(child)

    yield from walk(module)


def _backbone(self: PreTrainedModel, **inputs: Any) -> Any:
    return getattr(self, self.base_model_prefix)(**inputs)


def backbone_forward(model: PreTrainedModel) -> Callable[..., Any]:
    """What runs ``model``'s backbone (hidden states, no LM head): its ``base_model_prefix`` module,
    through the root's FSDP hooks when the model is sharded (they gather the embeddings)."""
    return getattr(model, BACKBONE_METHOD, None) or getattr(model, model.base_model_prefix)


def shard_model(model: PreTrainedModel, mesh) -> None:
    """``fully_shard`` each decoder layer, then the root; register the backbone-only forward."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    model.__dict__[BACKBONE_METHOD] = _backbone.__get__(model, type(model))
    register_fsdp_forward_method(model, BACKBONE_METHOD)


def shard_roles(roles: nn.Module, mesh) -> None:
    """Shard every model and score head of ``roles`` over ``mesh`` (module docstring).

    Each rank keeps the shard of its own copy, so the trainable weights (adapters and heads drawn
    from each process's RNG, or a fully fine-tuned model) are first broadcast from rank 0, as DDP
    does when it wraps a module; frozen base weights come from the same file or seed on every rank.
    """
    from torch.distributed.fsdp import fully_shard

    from alignbench.utils.distributed import broadcast_tensors_

    broadcast_tensors_([p for p in roles.parameters() if p.requires_grad])
    for model in _models(roles):
        shard_model(model, mesh)
    for head in getattr(roles, "heads", {}).values():
        fully_shard(head, mesh=mesh, reshard_after_forward=True)


def release(root: nn.Module) -> None:
    """Undo ``fully_shard`` on ``root`` and every submodule: whole parameters (tied ones stay tied,
    ``requires_grad`` kept), no FSDP hooks, state or class. A collective: every rank calls it."""
    import torch
    from torch.distributed import _composable_state
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    contract = importlib.import_module("torch.distributed._composable.contract")
    whole: dict[int, nn.Parameter] = {}
    for module in root.modules():
        for name, param in list(module._parameters.items()):
            if isinstance(param, DTensor):
                if id(param) not in whole:
                    with torch.no_grad():
                        tensor = param.full_tensor().detach().clone()
                    whole[id(param)] = nn.Parameter(tensor, requires_grad=param.requires_grad)
                module._parameters[name] = whole[id(param)]
    for module in root.modules():
        if isinstance(module, FSDPModule):
            state = module._get_fsdp_state()
            handles = [state._pre_forward_hook_handle, state._post_forward_hook_handle]
            for group in state._fsdp_param_groups:  # state-dict hooks, per group and per parameter
                handles += [fsdp_param._post_load_hook_handle for fsdp_param in group.fsdp_params]
                handles += list(group._module_to_pre_save_state_dict_hook_handle.values())
                handles += list(group._module_to_pre_load_state_dict_hook_handle.values())
            for handle in {id(h): h for h in handles if h is not None}.values():
                handle.remove()
            module.__class__ = type(module).__mro__[FSDPModule._orig_cls_mro_index]
            module.__dict__.pop(contract.STATE_KEY, None)
            module.__dict__.pop(contract.REGISTRY_KEY, None)
            _composable_state._module_state_mapping.pop(module, None)
        for attribute in ("_is_fsdp_managed_module", "_fsdp_use_orig_params", BACKBONE_METHOD):
            module.__dict__.pop(attribute, None)


def sharded_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters held by this rank (its shards, or whole tensors)."""
    from torch.distributed.tensor import DTensor

    seen: dict[int, int] = {}
    for param in module.parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        seen[id(param)] = local.numel() * local.element_size()
    return sum(seen.values())


def unshard_roles(roles: nn.Module) -> None:
    """Every model and head of ``roles`` whole again (no-op when nothing is sharded)."""
    from alignbench.utils.distributed import is_sharded

    if not is_sharded(roles):
        return
    for model in _models(roles):
        release(model)
    for head in getattr(roles, "heads", {}).values():
        release(head)
