"""Domain validation of vectors: every float32 vector with a nonzero entry can be normalised by the index."""

import numpy as np
import pytest

from index.validation import normalize_rows
from service.domain.validation import normalisable

pytestmark = pytest.mark.unit


def test_a_vector_is_normalisable_exactly_when_the_index_can_normalise_it():
    smallest = np.float32(np.finfo(np.float32).smallest_subnormal)
    rows = np.array([[0, 0, 0], [smallest, 0, 0], [0, -smallest, 0], [3e38, 3e38, -3e38], [1, 2, 3]], dtype=np.float32)
    assert normalisable(rows).tolist() == [False, True, True, True, True]
    unit = normalize_rows(rows[1:])
    np.testing.assert_allclose(np.linalg.norm(unit.astype(np.float64), axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="zero norm"):
        normalize_rows(rows[:1])
