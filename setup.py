from pathlib import Path

from setuptools import find_namespace_packages, setup

setup(
    name="modeling_pal",
    version="0.1.0",
    description="PAL (Probing Audio Encoders via LLMs) for Hugging Face Transformers: PLITS, LAL and encoder ensembles",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # namespace packages: the local `evaluate` metric modules (metrics/<name>/<name>.py) have no __init__.py
    packages=find_namespace_packages(include=["modeling_pal", "modeling_pal.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",
        "transformers==5.24.*",
        "accelerate>=1.15",
        "datasets>=5.2",
        "huggingface-hub>=1.31,<3",
        "safetensors",
        "soundfile",
        "soxr",
        "numpy",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        "train": ["trl>=1.16", "peft>=0.21", "matplotlib"],
        "eval": ["evaluate>=0.4", "scikit-learn", "sacrebleu", "jiwer", "pycocoevalcap"],
        "data": ["torchcodec==0.13.0"],
    },
)
