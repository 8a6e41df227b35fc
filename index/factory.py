"""Bounds on FAISS ``index_factory`` strings, checked before FAISS sees them.

FAISS takes factory parameters at face value: ``HNSW1000000`` builds (and then spends ~8 MB per vector
on neighbour slots), ``PQ8x20`` allocates 2^20 x dimension centroids at once, and numbers past
``int`` range make its C++ parser throw ``stoi``. So a factory string is accepted only if it is built
from the components below (a subset of FAISS's grammar, parsed the way ``faiss/index_factory.cpp``
parses it) with every parameter inside its documented range:

* refinement: ``<index>,RFlat`` and ``<index>,Refine(<index>)``;
* pre-transforms, each followed by a comma: ``PCA[W][R]<d_out>``, ``OPQ<M>[_<d_out>]``,
  ``RR[<d_out>]``, ``L2norm``;
* ``Flat``, ``HNSW[<M>][,|_<storage>]``, ``NSG[<R>][,|_<storage>]`` (storage: Flat, PQ, SQ);
* ``IVF<nlist>[k|M][_HNSW[<M>]|_NSG<R>],<codes>`` (codes: Flat, PQ, PQ<M>x4fs, SQ, RQ, LSQ, PRQ, PLSQ);
* codecs on their own: ``PQ<M>[x<nbits>][np]``, ``PQ<M>x4fs``, the SQ types,
  ``RQ<M>x<nbits>[_<M>x<nbits>...]``, ``LSQ<M>x<nbits>``, ``PRQ|PLSQ<nsplits>x<M>x<nbits>`` (the additive
  ones with an optional ``_N...`` norm).

Memory bounds hold what one index allocates for its trained parameters (centroids, codebooks,
matrices) to ``MAX_TRAINED_BYTES`` whatever the dimension; data-proportional memory (codes, graph
links) is bounded through the per-vector parameters (HNSW M, NSG R, PQ M).
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

# Length of a factory string: FAISS parses it with std::regex, which recurses per character (a
# 100,000-character string crashes the process with a segfault on faiss 1.15.1); also bounds the
# nesting of refine wrappers.
MAX_FACTORY_LENGTH = 256
# Every integer literal, wherever it appears: keeps FAISS's C++ parser (std::stoi, 32-bit) from overflowing.
MAX_INTEGER_LITERAL = 1 << 20
# Trained parameters of one component (float32 centroids, codebooks, transform matrices).
MAX_TRAINED_BYTES = 256 << 20
_MAX_TRAINED_FLOATS = MAX_TRAINED_BYTES // 4
# HNSW M: 2*M int32 neighbour slots per vector at level 0 (1 KiB at 128); FAISS suggests 4..64.
HNSW_M_RANGE = (2, 128)
# NSG R: R int32 out-edges per vector; FAISS's default is 32.
NSG_R_RANGE = (2, 128)
# IVF nlist: one inverted list each, and nlist x dimension float32 centroids (also <= MAX_TRAINED_BYTES).
IVF_NLIST_RANGE = (1, 65536)
# PQ nbits: 2^nbits x dimension float32 centroids are allocated at construction (also <= MAX_TRAINED_BYTES);
# FAISS refuses more than 24 and trains 39 x 2^nbits vectors.
PQ_NBITS_RANGE = (1, 16)
# Additive quantizers (RQ, LSQ, PRQ, PLSQ): bits per codebook and number of codebooks (code size and
# encoding time grow with both); sum of 2^nbits x dimension float32 codebook entries <= MAX_TRAINED_BYTES,
# and LSQ's (M x 2^nbits)^2 float32 pairwise codebook terms <= MAX_TRAINED_BYTES.
AQ_NBITS_RANGE = (1, 16)
AQ_CODEBOOKS_RANGE = (1, 64)
# PCA, OPQ and RR train d_in x d_in float32 matrices: d_in^2 x 4 bytes <= MAX_TRAINED_BYTES (8192).
MAX_TRANSFORM_INPUT = math.isqrt(_MAX_TRAINED_FLOATS)
# FAISS's scalar quantizer types (no parameters).
SQ_TYPES = ("SQ4", "SQ6", "SQ8", "SQfp16", "SQbf16", "SQ8_direct", "SQ8_direct_signed")

_SUPPORTED = (
    "Flat, HNSW, NSG, IVF (alone, _HNSW or _NSG), PQ, PQ<M>x4fs, " + ", ".join(SQ_TYPES)
    + ", RQ, LSQ, PRQ, PLSQ, PCA/OPQ/RR/L2norm pre-transforms, RFlat and Refine(...)"
)
_AQ_NORM = r"(?:_Nnone|_Nfloat|_Nqint8|_Nqint4|_Ncqint8|_Ncqint4|_Nlsq2x4|_Nrq2x4)?"


def check(factory: str, dimension: int) -> None:
    """Raise ValueError unless ``factory`` (already stripped, see validation.check_factory) is built
    from supported components whose parameters are all within bounds for ``dimension``."""
    checker = _Checker(factory, dimension)
    checker.length()
    checker.integer_literals()
    checker.index(factory, dimension)


def not_accepted(factory: str, dimension: int) -> str:
    """Our words for a factory string FAISS or we cannot build (never FAISS's C++ text)."""
    return f"{_shortened(factory)!r} is not a FAISS factory string accepted for dimension {dimension}"


def _full(pattern: str, text: str) -> re.Match[str] | None:
    """``re.fullmatch`` with ASCII classes: FAISS's ``[0-9]`` is not Python's Unicode ``\\d``."""
    return re.fullmatch(pattern, text, re.ASCII)


def _shortened(text: str, limit: int = 80) -> str:
    """``text`` cut at ``limit`` characters for a message (callers may pass strings of any length)."""
    return text if len(text) <= limit else text[:limit] + "..."


class _Checker:
    """Walks a factory string the way faiss/index_factory.cpp does, tracking the dimension each part
    sees (pre-transforms change it), and fails on the first out-of-range parameter."""

    def __init__(self, factory: str, dimension: int):
        self.factory = factory
        self.dimension = dimension

    # ------------------------------------------------------------------ failures
    def fail(self, message: str) -> NoReturn:
        raise ValueError(f"factory {_shortened(self.factory)!r}: {message}")

    def unsupported(self, part: str) -> NoReturn:
        raise ValueError(
            f"{not_accepted(self.factory, self.dimension)}: unsupported part {_shortened(part)!r} "
            f"(supported: {_SUPPORTED})"
        )

    def within(self, what: str, value: int, bounds: tuple[int, int]) -> None:
        low, high = bounds
        if not low <= value <= high:
            self.fail(f"{what} must be between {low} and {high}, got {value}")

    def trained_floats(self, what: str, got: str, floats: int, kind: str) -> None:
        """Bound one component's trained parameters (``floats`` float32 values) to MAX_TRAINED_BYTES."""
        if floats > _MAX_TRAINED_FLOATS:
            self.fail(
                f"{what} must be at most {_MAX_TRAINED_FLOATS} ({MAX_TRAINED_BYTES >> 20} MiB of float32 {kind}), "
                f"got {got} = {floats}"
            )

    def length(self) -> None:
        if len(self.factory) > MAX_FACTORY_LENGTH:
            self.fail(f"factory strings must be at most {MAX_FACTORY_LENGTH} characters, got {len(self.factory)}")

    def integer_literals(self) -> None:
        """Every number must fit far inside FAISS's 32-bit parser (compared as text: no huge int())."""
        for literal in re.findall(r"[0-9]+", self.factory):
            digits = literal.lstrip("0") or "0"
            if len(digits) > len(str(MAX_INTEGER_LITERAL)) or int(digits) > MAX_INTEGER_LITERAL:
                self.fail(f"numbers must be at most {MAX_INTEGER_LITERAL}, got {_shortened(digits, 20)}")

    # ------------------------------------------------------------------ structure
    def index(self, s: str, d: int) -> None:
        """One (sub-)index at input dimension ``d``: refine wrappers, then pre-transforms, then the base."""
        if m := _full(r"(.+),RFlat", s):
            return self.index(m[1], d)
        if m := _full(r"(.+),Refine\((.+)\)", s):
            self.index(m[1], d)
            return self.index(m[2], d)
        transformed = False
        while (m := _full(r"([^,]+),(.*)", s)) and (d_out := self.transform(m[1], d)) is not None:
            s, d, transformed = m[2], d_out, True
        if transformed:
            return self.index(s, d)
        return self.base(s, d)

    def transform(self, s: str, d: int) -> int | None:
        """Output dimension of pre-transform ``s`` at input ``d``, or None if ``s`` is not one."""
        if _full(r"L2[nN]orm", s):
            return d
        if m := _full(r"PCAW?R?(\d+)", s):
            return self.projection("PCA", d, int(m[1]))
        if m := _full(r"RR(\d+)?", s):
            return self.projection("RR", d, int(m[1] or d))
        if m := _full(r"OPQ(\d+)(?:_(\d+))?", s):
            d_out = self.projection("OPQ", d, int(m[2] or d))
            self.divisor("OPQ M", int(m[1]), d_out, "its output dimension")
            return d_out
        return None

    def projection(self, name: str, d: int, d_out: int) -> int:
        """PCA, OPQ and RR train d x d float32 matrices; here they may only keep or reduce the dimension."""
        self.within(f"{name} input dimension", d, (1, MAX_TRANSFORM_INPUT))
        self.within(f"{name} output dimension", d_out, (1, d))
        return d_out

    def base(self, s: str, d: int) -> None:
        if s == "Flat" or self.codec(s, d):
            return
        if m := _full(r"(HNSW|NSG)(\d*)(?:[,_](.*))?", s):
            self.graph(m[1], int(m[2] or 32))
            if not self.graph_storage(m[3] or "", d):
                self.unsupported(m[3])
            return
        coarse, comma, codes = s.partition(",")
        if not (comma and self.coarse(coarse, d)):
            self.unsupported(s)
        if codes != "Flat" and not self.codec(codes, d):
            self.unsupported(codes)

    def graph(self, kind: str, degree: int) -> None:
        if kind == "HNSW":
            self.within("HNSW M", degree, HNSW_M_RANGE)
        else:
            self.within("NSG R", degree, NSG_R_RANGE)

    def graph_storage(self, s: str, d: int) -> bool:
        """What FAISS accepts as HNSW/NSG storage: Flat (or nothing), PQ or SQ."""
        return s in ("", "Flat") or s in SQ_TYPES or self.pq(s, d)

    def coarse(self, s: str, d: int) -> bool:
        """IVF coarse quantizer ``IVF<nlist>[k|M][_HNSW[M]|_NSG<R>]``."""
        m = _full(r"IVF(\d+)([kM]?)(?:_(HNSW)(\d*)|_(NSG)(\d+))?", s)
        if m is None:
            return False
        nlist = int(m[1]) * {"": 1, "k": 1 << 10, "M": 1 << 20}[m[2]]
        self.within("IVF nlist", nlist, IVF_NLIST_RANGE)
        self.trained_floats("IVF nlist x dimension", f"{nlist} x {d}", nlist * d, "centroids")
        if m[3]:
            self.graph("HNSW", int(m[4] or 32))
        elif m[5]:
            self.graph("NSG", int(m[6]))
        return True

    # ------------------------------------------------------------------ codecs
    def codec(self, s: str, d: int) -> bool:
        """A vector codec at dimension ``d`` (alone, or as IVF codes): SQ, PQ, fast-scan PQ or additive."""
        if s in SQ_TYPES or self.pq(s, d):
            return True
        if m := _full(r"PQ(\d+)x4fs", s):  # refused later as fast-scan, but must build safely
            self.divisor("PQ M", int(m[1]), d, "its input dimension")
            return True
        return self.additive(s, d)

    def pq(self, s: str, d: int) -> bool:
        m = _full(r"PQ(\d+)(?:x(\d+))?(?:np)?", s)
        if m is None:
            return False
        self.divisor("PQ M", int(m[1]), d, "its input dimension")
        nbits = int(m[2] or 8)
        self.within("PQ nbits", nbits, PQ_NBITS_RANGE)
        self.trained_floats("PQ 2^nbits x dimension", f"2^{nbits} x {d}", (1 << nbits) * d, "centroids")
        return True

    def divisor(self, what: str, value: int, d: int, of: str) -> None:
        """FAISS splits the ``d`` components into ``value`` equal sub-vectors."""
        if not 1 <= value <= d or d % value:
            self.fail(f"{what} must be between 1 and {d} and divide {of} {d}, got {value}")

    def additive(self, s: str, d: int) -> bool:
        """RQ, LSQ, PRQ and PLSQ: codebooks of 2^nbits entries each."""
        if m := _full(rf"RQ(\d+x\d+(?:_\d+x\d+)*){_AQ_NORM}", s):
            groups = [tuple(map(int, g.split("x"))) for g in m[1].split("_")]
            self.codebooks("RQ", groups, sum(n for n, _ in groups), d)
        elif m := _full(rf"LSQ(\d+)x(\d+){_AQ_NORM}", s):
            groups = [(int(m[1]), int(m[2]))]
            self.codebooks("LSQ", groups, groups[0][0], d)
            self.lsq_terms("LSQ", *groups[0])
        elif m := _full(rf"(PRQ|PLSQ)(\d+)x(\d+)x(\d+){_AQ_NORM}", s):
            name, nsplits, msub, nbits = m[1], int(m[2]), int(m[3]), int(m[4])
            self.divisor(f"{name} number of splits", nsplits, d, "its input dimension")
            self.codebooks(name, [(msub, nbits)], nsplits * msub, d)
            if name == "PLSQ":
                self.lsq_terms(name, msub, nbits)
        else:
            return False
        return True

    def codebooks(self, name: str, groups: list[tuple[int, int]], total: int, d: int) -> None:
        """``groups``: (codebooks, nbits) pairs, each codebook spanning ``d`` dimensions in all."""
        for count, nbits in groups:
            self.within(f"{name} M", count, AQ_CODEBOOKS_RANGE)
            self.within(f"{name} nbits", nbits, AQ_NBITS_RANGE)
        self.within(f"{name} total number of codebooks", total, AQ_CODEBOOKS_RANGE)
        entries = sum(count << nbits for count, nbits in groups)
        self.trained_floats(f"{name} codebook entries x dimension", f"{entries} x {d}", entries * d, "codebooks")

    def lsq_terms(self, name: str, count: int, nbits: int) -> None:
        """LSQ encodes with a [M, M, 2^nbits, 2^nbits] table of pairwise codebook products."""
        self.trained_floats(
            f"{name} (M x 2^nbits)^2", f"({count} x 2^{nbits})^2", (count << nbits) ** 2, "pairwise codebook terms"
        )
