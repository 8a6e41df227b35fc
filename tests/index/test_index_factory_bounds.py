"""Factory strings: every parameter is bounded before FAISS sees it, and no FAISS C++ text reaches a
caller (index/factory.py, structure.create)."""

import logging
import re

import pytest

from index import VectorIndex, factory, structure

pytestmark = pytest.mark.unit

# What a FAISS C++ exception looks like: none of it may appear in our messages.
CPP_NOISE = re.compile(r"C\+\+|stoi|exception|Error in|faiss::|\.cpp|\.h:|/project/|std::", re.IGNORECASE)

# (dimension, factory) used by the other tests in tests/index, the docs' examples and common combos:
# all must stay accepted.
ACCEPTED = [
    (24, "Flat"), (24, "HNSW32"), (24, "IVF4,Flat"), (16, "HNSW16"), (16, "IVF32,Flat"), (16, "IVF64,Flat"),
    (32, "IVF256,Flat"), (16, "HNSW16,SQ8"), (16, "IVF16,Flat"), (16, "IVF16,PQ4"),
    (16, "IVF16,PQ8x4"), (16, "PQ8x4"), (16, "IVF16,SQ8"), (16, "IVF16,PQ8x4,RFlat"), (32, "NSG32"),
    (32, "IVF16,PQ16x4fs"), (64, "PQ16"), (64, "Flat"), (64, "HNSW32"), (64, "IVF1024,Flat"),
    (64, "IVF256,PQ16"), (64, "IVF64,SQ8"), (64, "IVF4096_HNSW32,Flat"), (64, "HNSW32_PQ16"),
    (64, "HNSW32,Flat"), (64, "IVF256,PQ16x8"), (64, "OPQ16_64,IVF256,PQ16"), (64, "PCA64,IVF256,Flat"),
    (64, "IVF64,PQ16,RFlat"), (64, "IVF64,PQ16,Refine(SQ8)"), (64, "IVF64,PQ16np"), (64, "HNSW"),
    (64, "HNSW32_Flat"), (64, "IVF64k,Flat"), (64, "IVF64_NSG32,Flat"), (64, "L2norm,Flat"),
    (64, "RR,Flat"), (64, "PCAWR16,HNSW32"), (64, "OPQ8,IVF64,PQ8"), (64, "RQ4x8"), (64, "RQ1x16_6x8"),
    (64, "RQ4x8_Nqint8"), (64, "LSQ4x8"), (64, "PRQ2x4x8"), (64, "PLSQ2x4x8"), (64, "IVF64,RQ2x8"),
    (64, "IVF64,LSQ2x8"), (64, "IVF64,PRQ2x2x8"),
] + [(16, sq) for sq in factory.SQ_TYPES] + [(16, f"IVF16,{sq}") for sq in factory.SQ_TYPES]

# (dimension, largest accepted, smallest refused beyond it, expected message) for each bound.
EDGES = [
    (4, "HNSW128", "HNSW129", "HNSW M must be between 2 and 128, got 129"),
    (4, "HNSW2", "HNSW1", "HNSW M must be between 2 and 128, got 1"),
    (4, "HNSW128,SQ8", "HNSW129,SQ8", "HNSW M must be between 2 and 128, got 129"),
    (4, "IVF16_HNSW128,Flat", "IVF16_HNSW129,Flat", "HNSW M must be between 2 and 128, got 129"),
    (4, "NSG128", "NSG129", "NSG R must be between 2 and 128, got 129"),
    (4, "NSG2", "NSG1", "NSG R must be between 2 and 128, got 1"),
    (4, "IVF16_NSG128,Flat", "IVF16_NSG129,Flat", "NSG R must be between 2 and 128, got 129"),
    (4, "IVF65536,Flat", "IVF65537,Flat", "IVF nlist must be between 1 and 65536, got 65537"),
    (4, "IVF64k,Flat", "IVF65k,Flat", "IVF nlist must be between 1 and 65536, got 66560"),
    (4, "IVF1,Flat", "IVF0,Flat", "IVF nlist must be between 1 and 65536, got 0"),
    (4, "IVF64k,Flat", "IVF1M,Flat", "IVF nlist must be between 1 and 65536, got 1048576"),
    (65536, "IVF1024,Flat", "IVF1025,Flat",
     "IVF nlist x dimension must be at most 67108864 (256 MiB of float32 centroids), got 1025 x 65536"),
    (64, "PQ64", "PQ128", "PQ M must be between 1 and 64 and divide its input dimension 64, got 128"),
    (64, "PQ1", "PQ0", "PQ M must be between 1 and 64 and divide its input dimension 64, got 0"),
    (64, "PQ32", "PQ5", "PQ M must be between 1 and 64 and divide its input dimension 64, got 5"),
    (64, "IVF16,PQ16x16", "IVF16,PQ16x17", "PQ nbits must be between 1 and 16, got 17"),
    (64, "PQ16x1", "PQ16x0", "PQ nbits must be between 1 and 16, got 0"),
    (64, "HNSW32_PQ16x16", "HNSW32_PQ16x17", "PQ nbits must be between 1 and 16, got 17"),
    (1024, "PQ16x16", "PQ16x17", "PQ nbits must be between 1 and 16, got 17"),
    (2048, "PQ16x15", "PQ16x16",
     "PQ 2^nbits x dimension must be at most 67108864 (256 MiB of float32 centroids), got 2^16 x 2048"),
    (64, "IVF64,PQ16,Refine(PQ16x16)", "IVF64,PQ16,Refine(PQ16x17)", "PQ nbits must be between 1 and 16"),
    (64, "OPQ16_64,PQ16", "OPQ16_65,PQ16", "OPQ output dimension must be between 1 and 64, got 65"),
    (64, "OPQ24_24,PQ24", "OPQ16_24,PQ16", "OPQ M must be between 1 and 24 and divide its output dimension 24"),
    (64, "OPQ16_32,PQ32", "OPQ16_32,PQ64", "PQ M must be between 1 and 32 and divide its input dimension 32"),
    (64, "PCA64,Flat", "PCA65,Flat", "PCA output dimension must be between 1 and 64, got 65"),
    (64, "PCA1,Flat", "PCA0,Flat", "PCA output dimension must be between 1 and 64, got 0"),
    (64, "PCA64,IVF256,Flat", "PCA32,IVF256,PQ64", "divide its input dimension 32, got 64"),
    (64, "RR64,Flat", "RR65,Flat", "RR output dimension must be between 1 and 64, got 65"),
    (64, "RQ64x8", "RQ65x8", "RQ M must be between 1 and 64, got 65"),
    (64, "RQ32x8_32x8", "RQ32x8_33x8", "RQ total number of codebooks must be between 1 and 64, got 65"),
    (64, "RQ1x16", "RQ1x17", "RQ nbits must be between 1 and 16, got 17"),
    (64, "RQ1x1", "RQ0x8", "RQ M must be between 1 and 64, got 0"),
    (1024, "RQ1x16", "RQ2x16",
     "RQ codebook entries x dimension must be at most 67108864 (256 MiB of float32 codebooks), got 131072 x 1024"),
    (64, "LSQ32x8", "LSQ33x8",
     "LSQ (M x 2^nbits)^2 must be at most 67108864 (256 MiB of float32 pairwise codebook terms), got (33 x 2^8)^2"),
    (64, "IVF16,LSQ2x12", "IVF16,LSQ3x12", "LSQ (M x 2^nbits)^2 must be at most 67108864"),
    (64, "PRQ2x32x8", "PRQ2x33x8", "PRQ total number of codebooks must be between 1 and 64, got 66"),
    (64, "PRQ64x1x8", "PRQ3x4x8", "PRQ number of splits must be between 1 and 64 and divide its input dimension 64"),
    (64, "PLSQ2x32x8", "PLSQ2x33x8", "PLSQ total number of codebooks must be between 1 and 64, got 66"),
    (64, "HNSW32", "IVF1048576,Flat", "IVF nlist must be between 1 and 65536, got 1048576"),
    (64, "HNSW32", "IVF1048577,Flat", "numbers must be at most 1048576, got 1048577"),
]

# (factory, largest dimension accepted, message at one more): bounds on the input dimension.
DIMENSION_EDGES = [
    ("PCA16,Flat", 8192, "PCA input dimension must be between 1 and 8192, got 8193"),
    ("RR16,Flat", 8192, "RR input dimension must be between 1 and 8192, got 8193"),
    ("OPQ16_64,PQ16", 8192, "OPQ input dimension must be between 1 and 8192, got 8193"),
    ("IVF1024,Flat", 65536, "IVF nlist x dimension must be at most 67108864 (256 MiB of float32 centroids), "
                            "got 1024 x 65537 = 67109888"),
    ("PQ1x16", 1024, "PQ 2^nbits x dimension must be at most 67108864 (256 MiB of float32 centroids), "
                     "got 2^16 x 1025 = 67174400"),
]

# Huge numbers and the inputs that used to get FAISS's own words back (the stoi case included).
HUGE = [
    (4, "HNSW1000000", "HNSW M must be between 2 and 128, got 1000000"),
    (4, "HNSW999999999", "numbers must be at most 1048576, got 999999999"),
    (64, "IVF99999999999,Flat", "numbers must be at most 1048576, got 99999999999"),  # "C++ exception stoi"
    (64, "IVF4096_HNSW99999999999,Flat", "numbers must be at most 1048576"),
    (64, "PQ8x20", "PQ nbits must be between 1 and 16, got 20"),
    (64, "IVF1024,PQ16x99999999999", "numbers must be at most 1048576"),
    (64, "Foo99999999999", "numbers must be at most 1048576"),
    (4, "HNSW" + "9" * 200, "numbers must be at most 1048576, got 99999999999999999999..."),
]

# Long strings: FAISS's std::regex parser overflows the C++ stack (a segfault) on ~100,000 characters.
LONG = [
    (4, "HNSW2,Flat" + ",RFlat" * 41, "HNSW32,Flat" + ",RFlat" * 41,
     "factory strings must be at most 256 characters, got 257"),
    (8, "HNSW32", "HNSW32," + "x" * 100_000, "factory strings must be at most 256 characters, got 100007"),
    (8, "HNSW32", "Flat" + ",RFlat" * 20_000, "factory strings must be at most 256 characters, got 120004"),
]

UNSUPPORTED = ["HNSW\u0663\u0662", "Foo12", "NotAnIndex", "IVF64", "IVF64,", "IVF64,Foo", "HNSW32,Foo", "RFlat", "SQ7", "PQ16+8",
               "LSH", "Flat,IDMap", "IVF16(PQ4),Flat", "PCA16", "ITQ,Flat", "IVF16,PQ16,Refine(Foo)", "IMI2x4,Flat"]


@pytest.fixture
def faiss_unreachable(monkeypatch):
    """Refused strings must be refused before FAISS parses (and allocates) anything."""

    def reached(*args):
        raise AssertionError("faiss.index_factory reached")

    monkeypatch.setattr(structure.faiss, "index_factory", reached)


def _refusal(dimension, text):
    with pytest.raises(ValueError) as info:
        VectorIndex(dimension, "l2", text)
    return str(info.value)


@pytest.mark.parametrize("dimension,text", ACCEPTED)
def test_factory_strings_in_use_are_accepted_and_build(dimension, text):
    assert structure.create(dimension, "l2", text).d == dimension


@pytest.mark.parametrize("text", ["Flat", "HNSW32", "IVF1024,Flat", "IVF256,PQ16", "IVF64,SQ8", "HNSW32_PQ16",
                                  "OPQ16_64,IVF256,PQ16", "PCA64,IVF256,Flat", "IVF64,PQ16,RFlat"])
def test_documented_factories_make_a_vector_index(text):
    assert VectorIndex(64, "l2", text).factory == text


@pytest.mark.usefixtures("faiss_unreachable")
@pytest.mark.parametrize("dimension,accepted,refused,message", EDGES)
def test_each_bound_at_its_edge(dimension, accepted, refused, message):
    factory.check(accepted, dimension)
    refusal = _refusal(dimension, refused)
    assert refusal.startswith(f"factory {refused!r}: ") and message in refusal


@pytest.mark.usefixtures("faiss_unreachable")
@pytest.mark.parametrize("text,dimension,message", DIMENSION_EDGES)
def test_dimension_bounds_at_their_edge(text, dimension, message):
    factory.check(text, dimension)
    assert _refusal(dimension + 1, text) == f"factory {text!r}: {message}"


@pytest.mark.parametrize("dimension,text", [(4, "HNSW128"), (4, "NSG128"), (4, "IVF65536,Flat"),
                                            (4, "IVF16_HNSW128,Flat"), (4, "PQ4x16"), (64, "OPQ16_64,PQ16"),
                                            (64, "PCA1,Flat"), (64, "RR64,Flat"), (64, "LSQ32x8"),
                                            (64, "RQ32x8_32x8"), (64, "PRQ2x32x8")])
def test_largest_accepted_values_build_in_faiss(dimension, text):
    assert structure.create(dimension, "l2", text).d == dimension


@pytest.mark.usefixtures("faiss_unreachable")
@pytest.mark.parametrize("dimension,accepted,refused,message", LONG)
def test_long_strings_are_refused_before_faiss(dimension, accepted, refused, message):
    factory.check(accepted, dimension)
    assert message in _refusal(dimension, refused)


def test_a_string_of_the_largest_length_builds():
    text = "HNSW2,Flat" + ",RFlat" * 41
    assert len(text) == factory.MAX_FACTORY_LENGTH and structure.create(4, "l2", text).d == 4


@pytest.mark.usefixtures("faiss_unreachable")
@pytest.mark.parametrize("dimension,text,message", HUGE)
def test_huge_numbers_are_refused_before_faiss(dimension, text, message):
    refusal = _refusal(dimension, text)
    assert message in refusal and len(refusal) < 300


def test_the_reported_hnsw_case_has_our_message():
    with pytest.raises(ValueError) as info:
        VectorIndex(4, "cosine", "HNSW1000000")
    assert str(info.value) == "factory 'HNSW1000000': HNSW M must be between 2 and 128, got 1000000"


@pytest.mark.usefixtures("faiss_unreachable")
@pytest.mark.parametrize("text", UNSUPPORTED)
def test_unsupported_strings_get_our_words(text):
    message = _refusal(32, text)
    assert message.startswith(f"{text!r} is not a FAISS factory string accepted for dimension 32: unsupported part")


def test_faiss_refusals_are_reworded_and_logged_at_debug(caplog):
    """HNSW-PQ storage is always L2 in FAISS, so refining it with an inner-product index fails inside
    FAISS: the caller gets our sentence, the C++ text only goes to the debug log."""
    text = "HNSW32_PQ4,Refine(Flat)"
    factory.check(text, 16)
    with caplog.at_level(logging.DEBUG, logger="index"), pytest.raises(ValueError) as info:
        VectorIndex(16, "dot", text)
    assert str(info.value) == f"{text!r} is not a FAISS factory string accepted for dimension 16"
    assert any(r.levelno == logging.DEBUG and "metric_type" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("faiss_unreachable")
@pytest.mark.parametrize("dimension,text", [(dimension, refused) for dimension, _, refused, _ in EDGES]
                         + [(dimension + 1, text) for text, dimension, _ in DIMENSION_EDGES]
                         + [(dimension, text) for dimension, text, _ in HUGE]
                         + [(dimension, refused) for dimension, _, refused, _ in LONG]
                         + [(32, text) for text in UNSUPPORTED])
def test_no_message_carries_cpp_noise(dimension, text):
    message = _refusal(dimension, text)
    assert not CPP_NOISE.search(message)
    assert message.startswith(("factory '", repr(text)))


@pytest.mark.parametrize("factory", ["HNSW16_PQ4", "HNSW16_PQ4,RFlat"])
def test_indexes_faiss_builds_for_l2_only_are_refused_for_other_metrics(factory):
    """FAISS ignores the metric for these: a cosine collection would hold an L2 index and score wrongly."""
    with pytest.raises(ValueError, match="for the l2 metric only, not cosine"):
        VectorIndex(16, "cosine", factory)
    assert VectorIndex(16, "l2", factory).metric == "l2"
