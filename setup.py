from setuptools import find_packages, setup

setup(
    # The distribution's name on the package index; the import name and the command stay
    # `landscape` (the index's `landscape` is an unrelated project: README, "Install").
    name="batchnorm-landscape",
    version="0.1.0",
    description="Why BatchNorm helps optimization: landscape probes, sweeps, HDF5 and reports",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["landscape", "landscape.*"]),
    package_data={"landscape": ["data/*.npz"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy",
        "scipy",
        "plotly",
        "h5py>=3.5",
        "click>=8.0",
        "pandas",  # landscape.read.to_frames and `landscape export`: tidy tables
        # --save-weights-*: snapshots as safetensors (no pickle; one small wheel, no deps)
        "safetensors",
    ],
    extras_require={
        "parquet": ["pyarrow"],  # `landscape export --format parquet`
        "ray": ["ray>=2.10"],  # `landscape run --ray`: a sweep's runs as tasks on a Ray cluster
        # landscape.integrations.lightning: LandscapeCallback
        "lightning": ["lightning>=2.0"],
        # `--tensorboard DIR`, Recorder(tensorboard=DIR): live TensorBoard events
        "tensorboard": ["tensorboard"],
        # import-linter checks the declared layering (.importlinter, tests/test_architecture.py);
        # xarray + h5netcdf: the tests open the HDF5 file as netCDF (named dimensions);
        # lightning, tensorboard: the callback and the live logs are tested with the real ones
        "test": ["pytest", "import-linter>=2.1", "xarray", "h5netcdf", "pyarrow", "lightning>=2.0",
                 "tensorboard"],
    },
    entry_points={"console_scripts": ["landscape=landscape.cli:main"]},
)
