"""Without the interpreter, CPU tensors take the ops' reference path (the session has the
interpreter on, so this runs in a subprocess)."""
from compile_helpers import run_compile_script


def test_ops_on_cpu_without_the_interpreter_take_the_reference_path():
    out = run_compile_script("cpu_fallback.py").stdout.split()
    assert out == ["atm", "ok", "qd", "ok", "postprocess", "ok"]
