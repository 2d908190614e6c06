"""The Triton interpreter fix in ``kernels/_common.py``: triton 3.6 (what torch 2.11 pins) turns an
interpreter scalar into an int with ``int()`` on a 1-element array, which NumPy >= 2.4 refuses, so
every kernel loop over a runtime length failed on CPU there."""
import operator

import numpy as np
import pytest
import triton.language as tl
from triton.runtime import interpreter

from segvit_rt.kernels import _common


def index_of_interpreter_scalar():
    """``operator.index`` and a ``range`` bound of a scalar as the interpreter holds it (a 1-element
    array), inside the interpreter's patched ``triton.language``."""
    scope = interpreter._patch_lang(_common.dot.fn)
    try:
        scalar = tl.tensor(interpreter.TensorHandle(np.array([7], dtype=np.int32), tl.int32), tl.int32)
        return operator.index(scalar), list(range(0, scalar, 3))
    finally:
        scope.restore()


def test_interpreter_scalars_serve_as_loop_bounds(monkeypatch):
    """As ``segvit_rt.kernels`` leaves the interpreter when TRITON_INTERPRET is set. On a GPU machine
    (no TRITON_INTERPRET: nothing patched at import) the fix is applied here, undone after."""
    if hasattr(interpreter, "_patch_lang_tensor"):
        monkeypatch.setattr(interpreter, "_patch_lang_tensor", interpreter._patch_lang_tensor)
        if not _common.interpreter_active():
            _common._fix_interpreter_index()
    assert index_of_interpreter_scalar() == (7, [0, 3, 6])


def test_fix_squeezes_the_index_once(monkeypatch):
    def triton36_patch(tensor, scope):  # what triton 3.6's interpreter does to ``__index__``
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", triton36_patch)
    if np.lib.NumpyVersion(np.__version__) >= "2.4.0":
        with pytest.raises(TypeError, match="0-dimensional"):
            index_of_interpreter_scalar()

    _common._fix_interpreter_index()
    _common._fix_interpreter_index()  # a second call must not wrap the wrapper
    fixed = interpreter._patch_lang_tensor
    assert fixed.squeezes_index and fixed.__closure__[0].cell_contents is triton36_patch
    assert index_of_interpreter_scalar() == (7, [0, 3, 6])
