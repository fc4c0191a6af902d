"""``--model``: the user's model for the demo, from ``module:callable`` or a Hugging Face model directory."""

from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

SENTENCES = ["Panther sketches the dense layers of a model.", "A sketch keeps most of the accuracy.",
             "Randomized linear algebra trades a little error for speed.", "The tuner picks a rank per layer."]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")


class ModelSpecError(ValueError):
    """--model names something that cannot be loaded as (model, example_inputs)."""


def _check_inputs(inputs, origin: str):
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return tuple(inputs)
    if isinstance(inputs, dict) and inputs and all(isinstance(t, torch.Tensor) for t in inputs.values()):
        return dict(inputs)
    raise ModelSpecError(f"{origin}: example_inputs must be a tensor, a non-empty tuple of tensors or a dict of "
                         f"tensors, got {type(inputs).__name__}")


def from_callable(spec: str):
    """``"package.module:factory"`` (``factory`` may be dotted) → ``factory()`` → (model, example_inputs)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelSpecError(f"--model {spec!r}: expected 'module:callable' (e.g. mypkg.models:make_model)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script does not put the working directory on the path
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"--model {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelSpecError(f"--model {spec!r}: {target.__name__ if hasattr(target, '__name__') else target!r} "
                                 f"has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelSpecError(f"--model {spec!r}: {attr} is not callable")
    result = target()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise ModelSpecError(f"--model {spec!r}: the callable must return (model: torch.nn.Module, example_inputs), "
                             f"got {type(result).__name__}")
    return result[0], _check_inputs(result[1], f"--model {spec!r}")


def from_hf_dir(path: str):
    """A transformers model saved with ``save_pretrained``; inputs from its tokenizer, else random token ids."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelSpecError(f"--model {path!r}: a Hugging Face model directory needs a config.json")
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ModelSpecError(f"--model {path!r}: loading a Hugging Face model needs transformers "
                             f"(pip install transformers)") from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    tokenizer = None
    if any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):  # only the directory's own
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer is not None:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        encoded = tokenizer(SENTENCES, return_tensors="pt", padding=True)
        inputs = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
    else:
        vocab = getattr(config, "vocab_size", None)
        if not vocab:
            raise ModelSpecError(f"--model {path!r}: no tokenizer and no vocab_size in config.json to make inputs")
        ids = torch.randint(0, vocab, (len(SENTENCES), 16), generator=torch.Generator().manual_seed(0))
        inputs = {"input_ids": ids}
    return model, inputs


def load_user_model(spec: str):
    """(model in eval mode, example_inputs) for ``--model``; raises :class:`ModelSpecError` with the reason."""
    if os.path.isdir(spec):
        model, inputs = from_hf_dir(spec)
    elif ":" in spec:
        model, inputs = from_callable(spec)
    else:
        raise ModelSpecError(f"--model {spec!r}: expected 'module:callable' or an existing Hugging Face model "
                             f"directory (no such directory)")
    return model.eval(), inputs


def move(inputs, device):
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return tuple(t.to(device) for t in inputs)
