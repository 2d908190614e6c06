"""The autotuning keys a launch wrapper hands Triton, recorded without running a kernel."""


def recorded_keys(monkeypatch, module, launch) -> dict[str, tuple]:
    """Run ``launch()`` with ``module``'s kernels replaced by recorders; return each kernel's key
    values (by kernel name) as Triton's autotuner would read them (it adds the tensor dtypes)."""
    keys = {}

    class Recorder:
        def __init__(self, autotuner):
            self.autotuner = autotuner

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                named = {**dict(zip(self.autotuner.arg_names, args)), **kwargs}
                keys[self.autotuner.fn.__name__] = tuple(named[k] for k in self.autotuner.keys)

            return run

    monkeypatch.setattr(module, "launcher", Recorder)
    launch()
    return keys
