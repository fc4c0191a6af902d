"""Optuna storage from a URL or a path, set up so that searches survive crashes and share work.

* ``"sqlite:///tune.db"``, ``"postgresql://..."`` (anything with ``://``): Optuna's RDB storage.
  SQLite gets a generous lock timeout so several worker processes can share one file.
* any other string or ``os.PathLike``: a journal file (``JournalFileBackend``), append-only,
  safe for several processes on one file system (and on NFS).
* an ``optuna.storages.BaseStorage``: used as is.
* ``None``: in memory (nothing survives the process).

Budgets count *finished* trials (complete or failed) in the study, so a resumed or shared
search stops when the study as a whole has enough of them. A trial of a process that was
killed stays "running" in the storage; it is ignored (never counted, never reused).
"""

from __future__ import annotations

import hashlib
import os


def resolve_storage(storage):
    import optuna

    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if isinstance(storage, os.PathLike):
        storage = os.fspath(storage)
    if not isinstance(storage, str) or not storage:
        raise TypeError(f"storage must be an Optuna storage URL (e.g. 'sqlite:///tune.db'), a journal file "
                        f"path, an optuna.storages.BaseStorage or None, got {storage!r}")
    if "://" in storage:
        engine_kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
        return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    directory = os.path.dirname(os.path.abspath(storage))
    if not os.path.isdir(directory):
        raise ValueError(f"storage: the folder of the journal file {storage!r} does not exist")
    return JournalStorage(JournalFileBackend(storage))


def finished_trials(study) -> list:
    """Trials that completed or failed (running and waiting ones excluded)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def fingerprint(parts) -> str:
    """A short digest of ``parts`` (strings and tensors, in order), for study names: a stored
    search is reused only for the same weights and data. Tensors contribute their shape, dtype,
    float64 sum and every n-th value (at most 65536 of them), which changes with any real
    retraining or new data at little cost for large tensors."""
    import torch

    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, torch.Tensor):
            flat = part.detach().reshape(-1)
            digest.update(f"{tuple(part.shape)}{part.dtype}{float(flat.double().sum())!r}".encode())
            digest.update(flat[:: max(1, flat.numel() // 65536)].float().cpu().numpy().tobytes())
        else:
            digest.update(str(part).encode())
    return digest.hexdigest()[:16]
