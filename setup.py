from setuptools import find_packages, setup

setup(
    name="cvr",
    version="0.1.0",
    description="Spark feature pipeline and Horovod training for conversion-rate models",
    packages=find_packages(include=["cvr", "cvr.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        "torch==2.13.0",
        "pyspark==4.0.5",
        "pyarrow==14.0.2",
        "numpy==1.26.4",
        "pandas==2.2.3",
        "petastorm==0.12.1",
        "deltalake==1.6.6",
        "delta-spark==4.0.1",
        "horovod==0.28.1",
        "pyyaml>=6",
    ],
    entry_points={"console_scripts": ["cvr=cvr.cli.main:main"]},
)
