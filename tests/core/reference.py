"""The plain-PyTorch reference that attrib's traces are compared with: forward hooks, tensor hooks,
retain_grad and one ordinary backward."""

from __future__ import annotations

from typing import Callable

import torch


def submodule(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    return root.get_submodule(dotted)


def first_tensor(value):
    return value[0] if isinstance(value, tuple) else value


def reference_grads(hf: torch.nn.Module, ids: torch.Tensor, paths: list[str],
                    loss_fn: Callable[[torch.Tensor], torch.Tensor],
                    grad_hooks: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                    output_edits: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Gradients of ``loss_fn(logits)`` w.r.t. the (first tensor of the) outputs of ``paths``.

    ``grad_hooks[path]`` is registered with ``tensor.register_hook`` on that output;
    ``output_edits[path]`` replaces that module's output (first tensor) in the forward.
    Returns (grads by path, logits, loss).
    """
    grad_hooks = grad_hooks or {}
    output_edits = output_edits or {}
    store: dict[str, torch.Tensor] = {}
    handles = []

    def capture(path):
        def hook(module, args, out):
            t = first_tensor(out)
            if path in output_edits:
                t = output_edits[path](t)
                out = (t, *out[1:]) if isinstance(out, tuple) else t
            store[path] = t
            return out
        return hook

    for path in set(paths) | set(output_edits):
        handles.append(submodule(hf, path).register_forward_hook(capture(path)))
    try:
        logits = hf(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    for path in paths:
        store[path].retain_grad()
        if path in grad_hooks:
            store[path].register_hook(grad_hooks[path])
    loss = loss_fn(logits)
    logits.retain_grad()
    loss.backward()
    grads = {p: store[p].grad for p in paths}
    hf.zero_grad(set_to_none=True)
    return grads, logits, loss
