"""The two scripts are self-contained by design, so a few helpers exist in both: they must not drift."""
import inspect

import pytest

SHARED = ["ArgumentParser", "resolve_path", "resolve_device", "atomic_torch_save", "write_json_atomic", "read_json", "_pyplot",
          "StopRequest"]


@pytest.mark.parametrize("name", SHARED)
def test_helper_copies_are_identical(ig, ag, name):
    assert inspect.getsource(getattr(ig, name)) == inspect.getsource(getattr(ag, name))
