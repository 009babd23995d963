"""Packaging: the sdist carries every file a build needs, installs into a fresh venv holding only torch and works
there; the metadata is complete; a _C built against another torch gets a clear rebuild error at import."""
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest
import torch

import lstm_fused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW = os.environ.get("LSTM_FUSED_SDIST_TEST", "0") == "1"  # .ci/run sets it: a full build in a fresh venv


def _checkout_files():
    """Tracked and untracked-but-not-ignored files: what a clean clone of this work tree holds."""
    if not os.path.isdir(os.path.join(ROOT, ".git")) or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if os.path.exists(os.path.join(ROOT, f))]


def _copy_checkout(dst):
    files = _checkout_files()
    for f in files:
        os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dst, f))
    return files


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """An sdist built from a clean copy of the checkout (no build folders, no compiled files)."""
    src = tmp_path_factory.mktemp("checkout")
    files = _copy_checkout(src)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=src, check=True,
                   capture_output=True, text=True)
    (tarball,) = os.listdir(dist)
    return os.path.join(dist, tarball), files


def test_sdist_carries_every_source(sdist):
    tarball, files = sdist
    assert os.path.basename(tarball) == f"lstm_fused-{lstm_fused.__version__}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = [f for f in files if f.startswith("csrc/") or (f.startswith("lstm_fused/") and f.endswith(".py"))]
    needed += ["setup.py", "pyproject.toml", "README.md", "LICENSE"]
    assert any(f.endswith(".cu") for f in needed) and any(f.endswith(".h") for f in needed)
    missing = [f for f in needed if f not in names]
    assert not missing, f"sdist lacks {missing}"
    assert "lstm_fused/_build_info.py" not in names  # written by each build, never shipped
    assert not [n for n in names if n.endswith((".so", ".o"))]


def test_metadata_is_complete(sdist):
    tarball, _ = sdist
    with tarfile.open(tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO") and m.name.count("/") == 1)
        pkg_info = tar.extractfile(member).read().decode()
    assert f"Version: {lstm_fused.__version__}" in pkg_info
    assert "License" in pkg_info and "BSD-3-Clause" in pkg_info
    assert "Classifier: Programming Language :: Python :: 3" in pkg_info
    assert "Description-Content-Type: text/markdown" in pkg_info
    assert "# lstm_fused" in pkg_info  # the README is the long description


def test_build_torch_version_recorded():
    from lstm_fused import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__


CHECK = textwrap.dedent("""
    import importlib.metadata, torch, lstm_fused
    assert lstm_fused.__version__ == importlib.metadata.version("lstm_fused"), lstm_fused.__version__
    assert "site-packages" in lstm_fused.__file__, lstm_fused.__file__
    from lstm_fused import _build_info
    assert _build_info.TORCH_VERSION == torch.__version__, _build_info.TORCH_VERSION
    # A user's install neither compiles nor registers the test-only ops.
    assert _build_info.WITH_TESTING is False
    assert not hasattr(torch.ops.lstm_fused_testing, "emu_lstm_layer_fwd")
    assert not hasattr(torch.ops.lstm_fused_testing, "path_counts")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    m = lstm_fused.LSTM(3, 5, num_layers=2, bidirectional=True)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    print("SDIST-OK", lstm_fused.__version__)
""")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv holding torch (the same release as this environment's, from pip's cache or the local wheel)
    and the build tools, nothing else."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"torch=={torch.__version__.split('+')[0]}", "setuptools", "wheel", "ninja", "numpy"], check=True)
    return py


def _pip(py, *args):
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    env.pop("LSTM_FUSED_TESTING", None)  # a user's build: no test-only ops
    subprocess.run([py, "-m", "pip", "-q", "--disable-pip-version-check", *args], check=True, env=env)


def _check_installed(py, cwd):
    run = subprocess.run([py, "-c", CHECK], cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0 and "SDIST-OK" in run.stdout, run.stdout + run.stderr


@pytest.mark.skipif(not SLOW, reason="builds the extension in a fresh venv (~2 min); set LSTM_FUSED_SDIST_TEST=1")
def test_sdist_installs_into_a_fresh_venv(sdist, fresh_venv, tmp_path):
    tarball, _ = sdist
    py = fresh_venv
    _pip(py, "install", "--no-build-isolation", tarball)
    _check_installed(py, tmp_path)
    # A _C built against another torch: the import says so and how to rebuild.
    info = subprocess.run([py, "-c", "import lstm_fused._build_info as b; print(b.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(info) as f:
        recorded = f.read()
    with open(info, "a") as f:
        f.write('TORCH_VERSION = "2.0.0"\n')
    run = subprocess.run([py, "-c", "import lstm_fused"], cwd=tmp_path, capture_output=True, text=True)
    with open(info, "w") as f:
        f.write(recorded)
    assert run.returncode != 0
    assert "built against torch 2.0.0" in run.stderr and "--no-build-isolation" in run.stderr, run.stderr


@pytest.mark.skipif(not SLOW, reason="builds the extension in a fresh venv (~2 min); set LSTM_FUSED_SDIST_TEST=1")
def test_pip_wheel_from_the_checkout(fresh_venv, tmp_path):
    """`pip wheel --no-build-isolation .` in a clean checkout gives a wheel that installs and works."""
    src = tmp_path / "checkout"
    _copy_checkout(src)
    _pip(fresh_venv, "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "wheels"), str(src))
    (wheel,) = os.listdir(tmp_path / "wheels")
    assert wheel.startswith(f"lstm_fused-{lstm_fused.__version__}-")
    _pip(fresh_venv, "install", "--force-reinstall", "--no-deps", str(tmp_path / "wheels" / wheel))
    _check_installed(fresh_venv, tmp_path)
    assert not os.path.exists(src / "lstm_fused" / "_build_info.py")  # the record went into the wheel only


C_LOADER = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char** argv) {
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);  /* every symbol resolved now: none may be Python's */
  if (!h) { printf("%s\n", dlerror()); return 1; }
  printf("loaded\n");
  return 0;
}
"""


def test_library_loads_in_a_process_without_python(tmp_path):
    """A C++ AOTInductor/TorchScript runner registers the ops by loading lstm_fused.library_path(): the library
    must not need libpython (strict binding, as at::DynamicLibrary and LD_BIND_NOW do)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "loader.c").write_text(C_LOADER)
    exe = tmp_path / "loader"
    subprocess.run([cc, str(tmp_path / "loader.c"), "-o", str(exe), "-ldl"], check=True)
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    env = {"PATH": os.environ.get("PATH", ""), "LD_LIBRARY_PATH": torch_lib, "LD_BIND_NOW": "1"}
    run = subprocess.run([str(exe), lstm_fused.library_path()], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "loaded" in run.stdout, run.stdout + run.stderr
