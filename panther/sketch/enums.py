"""Enumerations of the earlier Panther API (``DistributionFamily``, ``Axis``).

Both also accept their upper-case spellings (``DistributionFamily.GAUSSIAN`` as used in the
earlier documentation) and, through ``parse``, case-insensitive strings.
"""

from __future__ import annotations

import enum


class _Parsable(enum.Enum):
    @classmethod
    def parse(cls, value, name: str):
        """``value`` as a member: a member, or a member name in any case."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if member.name.lower() == value.lower():
                    return member
        choices = ", ".join(f"{cls.__name__}.{m.name}" for m in cls)
        raise TypeError(f"{name} must be one of {choices} (or its name as a string), got {value!r}")


class DistributionFamily(_Parsable):
    """Entry distribution of a dense sketch: Gaussian N(0, 1) or Uniform on [-√3, √3] (variance 1),
    both scaled by 1/√m in the operators that use them."""

    Gaussian = "gaussian"
    Uniform = "uniform"
    GAUSSIAN = "gaussian"  # alias
    UNIFORM = "uniform"  # alias


class Axis(_Parsable):
    """Which axis of a sparse operator carries the fixed number of non-zeros.

    Short: every vector along the short axis (a column of a wide [d, m] operator) has exactly
    ``vec_nnz`` non-zeros at distinct positions (SASO: CountSketch / SJLT).
    Long: every vector along the long axis (a row of a wide operator) gets ``vec_nnz``
    positions drawn with replacement, duplicates summed (LASO).
    """

    Short = "short"
    Long = "long"
    SHORT = "short"  # alias
    LONG = "long"  # alias
