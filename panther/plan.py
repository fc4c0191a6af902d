"""Plans: which layers to sketch, and how. The contract between search and rewriting.

A plan maps stable layer names to a decision: ``None`` (keep dense) or a
:class:`SketchSpec`. Names are qualified module names as in ``model.named_modules()``
("encoder.layer.0.attention.self.query"), so one plan drives the module swap
(``panther.sketch_model``), the ``backend="panther"`` graph rewrite and export alike.
The tuner produces plans; plans round-trip through JSON.

    plan = Plan({"fc1": SketchSpec(num_terms=1, low_rank=64), "fc2": None})
    plan.save("plan.json"); Plan.load("plan.json") == plan
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from ._validation import one_of, positive_int

INITS = ("sketch", "svd", "asvd")


@dataclass(frozen=True)
class SketchSpec:
    """How to sketch one layer.

    num_terms (L), low_rank (k): SKLinear/SKConv2d sizes (total rank 2Lk).
    init: "sketch" (random sign sketches of the weight: unbiased, noisy, for training),
    "svd" (best rank-2Lk approximation), "asvd" (activation-aware SVD: the weight
    whitened by the calibration inputs' second moment before truncation).
    For attention layers num_terms is unused and low_rank is the number of random features.
    """

    num_terms: int
    low_rank: int
    init: str = "sketch"

    def __post_init__(self):
        positive_int(self.num_terms, "num_terms")
        positive_int(self.low_rank, "low_rank")
        one_of(self.init, "init", INITS)

    @property
    def rank(self) -> int:
        return 2 * self.num_terms * self.low_rank


@dataclass
class Plan:
    """Decisions per layer name: a SketchSpec, or None for dense. Unlisted layers stay dense."""

    entries: dict[str, SketchSpec | None] = field(default_factory=dict)

    def __post_init__(self):
        for name, spec in self.entries.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"plan keys must be non-empty layer names (str), got {name!r}")
            if spec is not None and not isinstance(spec, SketchSpec):
                raise TypeError(f"plan entry {name!r} must be a SketchSpec or None, got {type(spec).__name__}")

    def get(self, name: str) -> SketchSpec | None:
        return self.entries.get(name)

    def sketched(self) -> dict[str, SketchSpec]:
        return {name: spec for name, spec in self.entries.items() if spec is not None}

    def check_names(self, known: set[str]) -> None:
        """Raises if the plan names a layer that is not among ``known`` (a typo never passes silently)."""
        unknown = sorted(set(self.entries) - set(known))
        if unknown:
            raise ValueError(f"plan names layers that do not exist: {unknown}; known layers: {sorted(known)}")

    def to_dict(self) -> dict:
        return {"version": 1, "layers": {n: (asdict(s) if s is not None else None) for n, s in self.entries.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        if not isinstance(data, dict) or "layers" not in data:
            raise ValueError("a plan dict must look like {'version': 1, 'layers': {name: spec-or-null}}")
        if data.get("version", 1) != 1:
            raise ValueError(f"unsupported plan version {data.get('version')!r}; this panther reads version 1")
        layers = data["layers"]
        return cls({n: (SketchSpec(**s) if s is not None else None) for n, s in layers.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        with open(path) as f:
            return cls.from_json(f.read())
