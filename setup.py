"""segvit_rt: SegViT semantic segmentation for deployment.

``kernels/`` and ``engines/`` live at the top of the repository but install as
``segvit_rt.kernels`` and ``segvit_rt.engines`` (PyPI already has unrelated
packages called ``kernels`` and ``engines``).
"""
import re
from pathlib import Path

from setuptools import setup

VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "segvit_rt" / "__init__.py").read_text(),
                    re.M).group(1)

setup(
    name="segvit_rt",
    version=VERSION,
    description="SegViT (ATM decoder, Shrunk variant) with fused Triton kernels, FP16 engines and a thin runtime",
    python_requires=">=3.10",
    packages=[
        "segvit_rt",
        "segvit_rt.ops",
        "segvit_rt.models",
        "segvit_rt.data",
        "segvit_rt.training",
        "segvit_rt.kernels",
        "segvit_rt.engines",
    ],
    package_dir={
        "segvit_rt": "segvit_rt",
        "segvit_rt.kernels": "kernels",
        "segvit_rt.engines": "engines",
    },
    package_data={"segvit_rt": ["assets/*"]},
    install_requires=[
        "torch>=2.11",
        "triton>=3.6",
        "numpy",
        "pillow",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        "tensorrt": ["tensorrt"],
    },
)
