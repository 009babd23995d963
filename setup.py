"""Build of lstm_fused._C (docs/DESIGN.md maps the folders).

Always: csrc/host/*.cpp (op definitions) and csrc/cpu/*.cpp (the CPU backend). CUDA sources (csrc/cuda/*.cu and
*.cpp) when the installed torch has CUDA and CUDA_HOME is found — and either a GPU is visible or FORCE_CUDA=1;
TORCH_CUDA_ARCH_LIST picks the GPU architectures (torch.utils.cpp_extension reads it; unset without a GPU:
8.0;9.0+PTX). LSTM_FUSED_CPU_ONLY=1 skips the CUDA sources whatever torch has. LSTM_FUSED_TESTING=1 (scripts/test.sh sets it) adds csrc/testing/*.cpp: the
test-only ops in their own namespace, lstm_fused_testing (the CUDA path emulated on the CPU, planners, path
counters); a user's install neither compiles nor registers them.
Install with `pip install --no-build-isolation .` so the build compiles against the torch that is installed.
"""
import glob
import os
import re
import sysconfig

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version():
    # The version lives in lstm_fused/_version.py alone (the package cannot be imported before _C is built).
    with open(os.path.join(ROOT, "lstm_fused", "_version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _write_build_info(path, use_cuda, testing):
    # Read by lstm_fused/__init__.py before it loads _C: a torch other than the one compiled against gets a
    # clear "rebuild" error instead of an undefined-symbol trace (the C++ ABI differs between torch versions).
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('"""Written by setup.py when _C is built; never part of the source tree or the sdist."""\n')
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"WITH_CUDA = {use_cuda!r}\n")
        f.write(f"WITH_TESTING = {testing!r}\n")


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("LSTM_FUSED_CPU_ONLY") or torch.version.cuda is None:
        return False
    if cpp_extension.CUDA_HOME is None:
        if _flag("FORCE_CUDA"):
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME (e.g. /usr/local/cuda)")
        return False
    return _flag("FORCE_CUDA") or torch.cuda.is_available()


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


class _BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """Records the torch it compiled against next to _C (in the tree for in-place/editable builds, else in the
    build folder the wheel is made from), so an sdist or a checkout never carries a stale record."""

    use_cuda = False
    testing = False

    def run(self):
        super().run()
        target = ROOT if self.inplace else self.build_lib
        _write_build_info(os.path.join(target, "lstm_fused", "_build_info.py"), self.use_cuda, self.testing)


def extension():
    def sources_in(folder, *exts):
        return _rel(f for ext in exts for f in glob.glob(os.path.join(ROOT, "csrc", folder, "*." + ext)))

    testing = _flag("LSTM_FUSED_TESTING")
    cpu_sources = sources_in("host", "cpp") + sources_in("cpu", "cpp") + (sources_in("testing", "cpp") if testing else [])
    cuda_sources = sources_in("cuda", "cu", "cpp")
    opt = ["-O3"] if not _flag("LSTM_FUSED_DEBUG") else ["-O0", "-g"]
    defines = ["-DLSTM_FUSED_TESTING"] if testing else []
    # LSTM_FUSED_ASAN=1: AddressSanitizer on the C++ code (scripts/asan_emulation.sh), so the emulated kernels'
    # writes past their buffers fault at once instead of when the heap happens to notice.
    asan = ["-fsanitize=address", "-fno-omit-frame-pointer"] if _flag("LSTM_FUSED_ASAN") else []
    cxx = opt + ["-std=c++20", "-fopenmp", "-fvisibility=hidden"] + defines + asan
    extra = {"cxx": cxx}
    include_dirs = [os.path.join(ROOT, "csrc")]
    use_cuda = _want_cuda() and bool(cuda_sources)
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to build for (FORCE_CUDA=1): the tensor-core GPUs, plus PTX of the newest so later ones (sm_100,
            # sm_120) JIT-compile it. With a GPU visible torch picks its architecture and adds PTX itself.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        ext_cls = cpp_extension.CUDAExtension
        sources = cpu_sources + cuda_sources
        extra["cxx"] = cxx + ["-DLSTM_FUSED_WITH_CUDA"]
        extra["nvcc"] = opt + defines + ["-std=c++20", "-DLSTM_FUSED_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo",
                               "-Xptxas=-v" if _flag("LSTM_FUSED_PTXAS_VERBOSE") else "-Xptxas=-O3"]
        # cublas_v2.h / cusparse.h (pulled in by ATen/cuda headers) ship in the nvidia-* wheels, not CUDA_HOME.
        site = sysconfig.get_paths()["purelib"]
        nv_inc = glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        include_dirs += [os.path.join(cpp_extension.CUDA_HOME, "include")] + nv_inc
    else:
        ext_cls = cpp_extension.CppExtension
        sources = cpu_sources
    print(f"lstm_fused: building {'CPU+CUDA' if use_cuda else 'CPU-only'} extension{' with test ops' if testing else ''}"
          f" from {len(sources)} sources")
    _BuildExt.use_cuda = use_cuda
    _BuildExt.testing = testing
    return ext_cls(
        name="lstm_fused._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] + asan,
        py_limited_api=False,
    )


with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="lstm_fused",
    version=_version(),
    description="Fused C++/CUDA LSTM kernels: a drop-in replacement for torch.nn.LSTM",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    license_files=["LICENSE"],
    author="the lstm_fused developers",
    keywords=["pytorch", "lstm", "gru", "rnn", "cuda", "fused kernels"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Environment :: GPU :: NVIDIA CUDA",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    packages=find_packages(include=["lstm_fused", "lstm_fused.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": _BuildExt},
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={"test": ["pytest", "numpy", "expecttest", "onnx", "onnxscript", "onnxruntime"]},
)
